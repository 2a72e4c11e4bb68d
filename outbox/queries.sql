-- All SQL of the producer library. Blocks start with "-- name: <name>".
--
-- Each publish statement writes the event, fans it out to its org's subscribed
-- endpoints (one delivery_queue row and one 'scheduled' delivery_log row each) and
-- wakes the deliverers, all at once. A transaction that publishes many times still
-- sends one notification: PostgreSQL folds identical notifications within a
-- transaction. A new delivery is due at the event's created_at, which is now(): the
-- start of the transaction.
--
-- The publisher's W3C trace context (traceparent, tracestate; NULL outside a trace)
-- is stored with the event: every attempt continues that trace. A delivery to an
-- endpoint whose ordering is 'fifo' also gets its place in that endpoint's order:
-- the event's ordering key (NULL for none) and this transaction's id (see
-- claim_deliveries).
--
-- Each has a *_legacy twin, the statement as released before those columns, for a
-- database that `deliverer migrate` has not brought up to date yet (see
-- outbox.publish: it asks once per connection): an application may upgrade this
-- library before the deliverer's migration runs, and its transactions must not fail
-- for it. Such a database has no ordered endpoints, and the trace context is not kept.

-- name: publish_event
-- One event without a dedupe key, in plain parameters: no arrays to unpack, and a
-- plan that stays cached once psycopg has prepared the statement.
WITH event AS (
    INSERT INTO outbox_event (id, org_id, event_type, body, ordering_key, traceparent, tracestate)
    VALUES (%(id)s::uuid, %(org_id)s, %(event_type)s, %(body)s, %(ordering_key)s, %(traceparent)s, %(tracestate)s)
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at,
                                ordering_key, txid)
    SELECT gen_random_uuid(), %(id)s::uuid, w.id, w.org_id, 1, 0, now(),
           CASE WHEN w.ordering = 'fifo' THEN coalesce(%(ordering_key)s, '') END,
           CASE WHEN w.ordering = 'fifo' THEN pg_current_xact_id() END
    FROM webhook_endpoint w
    WHERE w.org_id = %(org_id)s AND w.enabled AND w.deleted_at IS NULL
      AND (w.event_types IS NULL OR %(event_type)s = ANY (w.event_types))
    RETURNING delivery_id, event_id, endpoint_id, org_id
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, next_attempt_at)
    SELECT 'scheduled', delivery_id, event_id, endpoint_id, org_id, 1, 0, now() FROM queued
)
SELECT pg_notify('outbox_delivery', txid_current()::text) FROM (SELECT FROM queued LIMIT 1) AS any_delivery

-- name: publish_event_legacy
-- publish_event as released before the trace context and ordering columns.
WITH event AS (
    INSERT INTO outbox_event (id, org_id, event_type, body)
    VALUES (%(id)s::uuid, %(org_id)s, %(event_type)s, %(body)s)
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
    SELECT gen_random_uuid(), %(id)s::uuid, w.id, w.org_id, 1, 0, now()
    FROM webhook_endpoint w
    WHERE w.org_id = %(org_id)s AND w.enabled AND w.deleted_at IS NULL
      AND (w.event_types IS NULL OR %(event_type)s = ANY (w.event_types))
    RETURNING delivery_id, event_id, endpoint_id, org_id
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, next_attempt_at)
    SELECT 'scheduled', delivery_id, event_id, endpoint_id, org_id, 1, 0, now() FROM queued
)
SELECT pg_notify('outbox_delivery', txid_current()::text) FROM (SELECT FROM queued LIMIT 1) AS any_delivery

-- name: publish_event_deduplicated
-- One event with a dedupe key: written only if its (org, dedupe key) is free. Returns
-- the event id the key belongs to: this event's if it took the key, else the first
-- event's as this statement's snapshot sees it, or NULL when the key was taken by a
-- transaction that committed after the snapshot (find_deduplicated then sees it).
WITH claimed AS (
    INSERT INTO outbox_dedupe (org_id, dedupe_key, event_id)
    VALUES (%(org_id)s, %(dedupe_key)s, %(id)s::uuid)
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
event AS (
    INSERT INTO outbox_event (id, org_id, event_type, body, dedupe_key, ordering_key, traceparent, tracestate)
    SELECT event_id, %(org_id)s, %(event_type)s, %(body)s, %(dedupe_key)s, %(ordering_key)s, %(traceparent)s,
           %(tracestate)s
    FROM claimed
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at,
                                ordering_key, txid)
    SELECT gen_random_uuid(), c.event_id, w.id, w.org_id, 1, 0, now(),
           CASE WHEN w.ordering = 'fifo' THEN coalesce(%(ordering_key)s, '') END,
           CASE WHEN w.ordering = 'fifo' THEN pg_current_xact_id() END
    FROM claimed c
    JOIN webhook_endpoint w
      ON w.org_id = %(org_id)s AND w.enabled AND w.deleted_at IS NULL
     AND (w.event_types IS NULL OR %(event_type)s = ANY (w.event_types))
    RETURNING delivery_id, event_id, endpoint_id, org_id
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, next_attempt_at)
    SELECT 'scheduled', delivery_id, event_id, endpoint_id, org_id, 1, 0, now() FROM queued
),
woken AS (
    SELECT pg_notify('outbox_delivery', txid_current()::text) FROM (SELECT FROM queued LIMIT 1) AS any_delivery
)
SELECT coalesce((SELECT event_id FROM claimed),
                (SELECT event_id FROM outbox_dedupe WHERE org_id = %(org_id)s AND dedupe_key = %(dedupe_key)s)),
       (SELECT count(*) FROM woken) AS notified

-- name: publish_event_deduplicated_legacy
-- publish_event_deduplicated as released before the trace context and ordering columns.
WITH claimed AS (
    INSERT INTO outbox_dedupe (org_id, dedupe_key, event_id)
    VALUES (%(org_id)s, %(dedupe_key)s, %(id)s::uuid)
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
event AS (
    INSERT INTO outbox_event (id, org_id, event_type, body, dedupe_key)
    SELECT event_id, %(org_id)s, %(event_type)s, %(body)s, %(dedupe_key)s FROM claimed
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
    SELECT gen_random_uuid(), c.event_id, w.id, w.org_id, 1, 0, now()
    FROM claimed c
    JOIN webhook_endpoint w
      ON w.org_id = %(org_id)s AND w.enabled AND w.deleted_at IS NULL
     AND (w.event_types IS NULL OR %(event_type)s = ANY (w.event_types))
    RETURNING delivery_id, event_id, endpoint_id, org_id
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, next_attempt_at)
    SELECT 'scheduled', delivery_id, event_id, endpoint_id, org_id, 1, 0, now() FROM queued
),
woken AS (
    SELECT pg_notify('outbox_delivery', txid_current()::text) FROM (SELECT FROM queued LIMIT 1) AS any_delivery
)
SELECT coalesce((SELECT event_id FROM claimed),
                (SELECT event_id FROM outbox_dedupe WHERE org_id = %(org_id)s AND dedupe_key = %(dedupe_key)s)),
       (SELECT count(*) FROM woken) AS notified

-- name: publish_events
-- Many events, as one array per column (sent in binary: no quoting to do per
-- element). Events whose (org, dedupe key) is already taken, by an earlier event or
-- one earlier in the same batch, are skipped. Returns the ids of the events with a
-- dedupe key that were written; the caller knows the others were.
-- One trace context for the whole batch: the caller's.
WITH input AS (
    SELECT *
    FROM unnest(%(ids)b::uuid[], %(org_ids)b::text[], %(event_types)b::text[],
                %(bodies)b::text[], %(dedupe_keys)b::text[], %(ordering_keys)b::text[])
         AS i (id, org_id, event_type, body, dedupe_key, ordering_key)
),
claimed_keys AS (
    INSERT INTO outbox_dedupe (org_id, dedupe_key, event_id)
    SELECT org_id, dedupe_key, id FROM input WHERE dedupe_key IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
events AS (
    INSERT INTO outbox_event (id, org_id, event_type, body, dedupe_key, ordering_key, traceparent, tracestate)
    SELECT id, org_id, event_type, body, dedupe_key, ordering_key, %(traceparent)s, %(tracestate)s FROM input
    WHERE dedupe_key IS NULL OR id IN (SELECT event_id FROM claimed_keys)
    RETURNING id, org_id, event_type, dedupe_key, ordering_key
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at,
                                ordering_key, txid)
    SELECT gen_random_uuid(), e.id, w.id, e.org_id, 1, 0, now(),
           CASE WHEN w.ordering = 'fifo' THEN coalesce(e.ordering_key, '') END,
           CASE WHEN w.ordering = 'fifo' THEN pg_current_xact_id() END
    FROM events e
    JOIN webhook_endpoint w
      ON w.org_id = e.org_id AND w.enabled AND w.deleted_at IS NULL
     AND (w.event_types IS NULL OR e.event_type = ANY (w.event_types))
    RETURNING delivery_id, event_id, endpoint_id, org_id
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, next_attempt_at)
    SELECT 'scheduled', delivery_id, event_id, endpoint_id, org_id, 1, 0, now() FROM queued
),
woken AS (
    SELECT pg_notify('outbox_delivery', txid_current()::text) FROM (SELECT FROM queued LIMIT 1) AS any_delivery
)
SELECT ARRAY(SELECT id FROM events WHERE dedupe_key IS NOT NULL) AS keyed,
       (SELECT count(*) FROM woken) AS notified

-- name: publish_events_legacy
-- publish_events as released before the trace context and ordering columns.
WITH input AS (
    SELECT *
    FROM unnest(%(ids)b::uuid[], %(org_ids)b::text[], %(event_types)b::text[],
                %(bodies)b::text[], %(dedupe_keys)b::text[])
         AS i (id, org_id, event_type, body, dedupe_key)
),
claimed_keys AS (
    INSERT INTO outbox_dedupe (org_id, dedupe_key, event_id)
    SELECT org_id, dedupe_key, id FROM input WHERE dedupe_key IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
events AS (
    INSERT INTO outbox_event (id, org_id, event_type, body, dedupe_key)
    SELECT id, org_id, event_type, body, dedupe_key FROM input
    WHERE dedupe_key IS NULL OR id IN (SELECT event_id FROM claimed_keys)
    RETURNING id, org_id, event_type, dedupe_key
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
    SELECT gen_random_uuid(), e.id, w.id, e.org_id, 1, 0, now()
    FROM events e
    JOIN webhook_endpoint w
      ON w.org_id = e.org_id AND w.enabled AND w.deleted_at IS NULL
     AND (w.event_types IS NULL OR e.event_type = ANY (w.event_types))
    RETURNING delivery_id, event_id, endpoint_id, org_id
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, next_attempt_at)
    SELECT 'scheduled', delivery_id, event_id, endpoint_id, org_id, 1, 0, now() FROM queued
),
woken AS (
    SELECT pg_notify('outbox_delivery', txid_current()::text) FROM (SELECT FROM queued LIMIT 1) AS any_delivery
)
SELECT ARRAY(SELECT id FROM events WHERE dedupe_key IS NOT NULL) AS keyed,
       (SELECT count(*) FROM woken) AS notified

-- name: find_deduplicated
-- The first event id published under each (org, dedupe key).
SELECT d.org_id, d.dedupe_key, d.event_id
FROM outbox_dedupe d
JOIN unnest(%(org_ids)b::text[], %(dedupe_keys)b::text[]) AS k (org_id, dedupe_key)
  ON d.org_id = k.org_id AND d.dedupe_key = k.dedupe_key

-- name: schema_is_current
-- Whether `deliverer migrate` has brought the database up to this library's
-- statements: the last columns they need came with delivery_queue.txid, in one
-- migration.
SELECT EXISTS (SELECT FROM pg_attribute
               WHERE attrelid = to_regclass('delivery_queue') AND attname = 'txid' AND NOT attisdropped)
