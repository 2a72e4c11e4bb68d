-- All SQL of the producer library. Blocks start with "-- name: <name>".

-- name: publish_events
-- Insert events, skipping those whose (org, dedupe key) is already taken, fan each
-- new event out to its org's subscribed endpoints, and wake the deliverers. A
-- transaction that publishes many times still sends one notification: PostgreSQL
-- folds identical notifications within a transaction.
WITH input AS (
    SELECT *
    FROM unnest(%(ids)s::uuid[], %(org_ids)s::text[], %(event_types)s::text[],
                %(bodies)s::text[], %(dedupe_keys)s::text[])
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
    RETURNING id, org_id, event_type, created_at
),
fanout AS (
    SELECT gen_random_uuid() AS delivery_id, e.id AS event_id, w.id AS endpoint_id,
           e.org_id, e.created_at
    FROM events e
    JOIN webhook_endpoint w
      ON w.org_id = e.org_id AND w.enabled AND w.deleted_at IS NULL
     AND (w.event_types IS NULL OR e.event_type = ANY (w.event_types))
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
    SELECT delivery_id, event_id, endpoint_id, org_id, 1, 0, created_at FROM fanout
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                              next_attempt_at)
    SELECT 'scheduled', delivery_id, event_id, endpoint_id, org_id, 1, 0, created_at FROM fanout
),
woken AS (
    SELECT pg_notify('outbox_delivery', '') FROM (SELECT 1 FROM fanout LIMIT 1) AS any_delivery
)
SELECT id, (SELECT count(*) FROM woken) AS notified FROM events

-- name: find_deduplicated
-- The first event id published under each (org, dedupe key).
SELECT d.org_id, d.dedupe_key, d.event_id
FROM outbox_dedupe d
JOIN unnest(%(org_ids)s::text[], %(dedupe_keys)s::text[]) AS k (org_id, dedupe_key)
  ON d.org_id = k.org_id AND d.dedupe_key = k.dedupe_key
