-- All SQL of the deliverer. Blocks start with "-- name: <name>".
-- Statements that schedule or expire take %(now)s: NULL means the database's
-- clock, a timestamp lets tests drive time instead of sleeping.
-- delivery_log.kind and outcome are enum types (see schema.sql). A quoted literal,
-- or a parameter used only there, is read as the enum; any other text (a column, a
-- CASE or VALUES of literals, a parameter also cast to text) needs a cast to be
-- compared with them, and gets one here where it is written too: a constant is then
-- converted once, not row by row.

-- name: claim_deliveries
-- Lease up to %(limit)s due deliveries for one worker, in one statement. A due row
-- that is still leased belongs to a worker whose lease ran out: that attempt is
-- recorded as abandoned with an unknown outcome, and if it was the last attempt
-- allowed the delivery fails instead of being leased again.
-- Each endpoint gets at most its room in this worker: the room_* arrays list the
-- endpoints whose room is not default_room, full_endpoints those with none left, so
-- a slow endpoint's backlog is skipped instead of filling every free slot.
WITH room AS (
    SELECT * FROM unnest(%(room_endpoints)b::text[], %(room_free)b::int[]) AS room (endpoint_id, free)
),
candidates AS MATERIALIZED (
    SELECT h.delivery_id
    FROM (SELECT delivery_id, endpoint_id, due_at,
                 row_number() OVER (PARTITION BY endpoint_id ORDER BY due_at) AS nth
          FROM (SELECT delivery_id, endpoint_id, due_at
                FROM delivery_queue
                WHERE due_at <= coalesce(%(now)s::timestamptz, now())
                  AND endpoint_id <> ALL (%(full_endpoints)b::text[])
                ORDER BY due_at
                LIMIT %(scan)s) AS oldest) AS h
    LEFT JOIN room r ON r.endpoint_id = h.endpoint_id
    WHERE h.nth <= coalesce(r.free, %(default_room)s)
    ORDER BY h.due_at
),
-- Locks are taken one candidate at a time, oldest first, by primary key, until the
-- limit is reached: as a join the planner may hash every due row of a large backlog,
-- and a sort above the lock would lock candidates that are not then leased.
due AS (
    SELECT q.delivery_id, q.event_id, q.endpoint_id, q.org_id, q.series, q.attempt, q.leased_by,
           q.leased_by IS NOT NULL AND q.attempt >= %(max_attempts)s AS exhausted
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT * FROM delivery_queue q
        WHERE q.delivery_id = c.delivery_id AND q.due_at <= coalesce(%(now)s::timestamptz, now())
        FOR UPDATE SKIP LOCKED
    ) q
    LIMIT %(limit)s
),
abandoned AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                              outcome, next_attempt_at, worker_id, error_class, error_message)
    SELECT 'attempt_abandoned', delivery_id, event_id, endpoint_id, org_id, series, attempt,
           'unknown', CASE WHEN NOT exhausted THEN coalesce(%(now)s::timestamptz, now()) END,
           %(worker_id)s, 'lease_expired',
           'worker ' || leased_by || ' did not report an outcome before its lease expired'
    FROM due WHERE leased_by IS NOT NULL
    RETURNING 1
),
exhausted AS (
    DELETE FROM delivery_queue q USING due d
    WHERE q.delivery_id = d.delivery_id AND d.exhausted
),
leased AS (
    UPDATE delivery_queue q
    SET attempt = q.attempt + 1,
        leased_by = %(worker_id)s,
        due_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s)
    FROM due d
    WHERE q.delivery_id = d.delivery_id AND NOT d.exhausted
    RETURNING q.delivery_id, q.event_id, q.endpoint_id, q.org_id, q.series, q.attempt, q.due_at
),
started AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                              next_attempt_at, worker_id, started_at)
    SELECT 'attempt_started', delivery_id, event_id, endpoint_id, org_id, series, attempt,
           due_at, %(worker_id)s, coalesce(%(now)s::timestamptz, now())
    FROM leased
    -- Reading `abandoned` makes its rows go in first, so the log reads in order.
    WHERE (SELECT count(*) FROM abandoned) >= 0
)
SELECT l.delivery_id, l.event_id, l.endpoint_id, l.org_id, l.series, l.attempt,
       e.event_type, e.body, e.created_at, w.url, w.secret,
       CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
       w.enabled AND w.deleted_at IS NULL AS endpoint_enabled, l.due_at AS lease_until,
       NULL::float8 AS next_due_in
FROM leased l
JOIN outbox_event e ON e.id = l.event_id
JOIN webhook_endpoint w ON w.id = l.endpoint_id
UNION ALL
-- A last row, with only next_due_in: seconds until the earliest delivery not leased
-- here becomes due (a retry, a lease running out), so the worker knows how long it
-- may sleep without asking again.
-- It also makes this statement's commit asynchronous (set_config local to its own
-- transaction, so nothing is left on the session): waiting for the WAL flush was
-- most of the time from a producer's commit to the send (median 0.2 ms, p99 2.6 ms
-- here). If PostgreSQL crashes before the flush, the lease is lost and the delivery
-- is sent again; the first send's outcome is then logged as a late result. Nothing
-- is lost: the event and every outcome are committed synchronously.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT extract(epoch FROM min(q.due_at) - coalesce(%(now)s::timestamptz, now()))::float8
        FROM delivery_queue q
        WHERE q.delivery_id NOT IN (SELECT delivery_id FROM due))
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit

-- name: record_results
-- Write back a batch of attempt outcomes. An outcome only changes the delivery if
-- the worker still holds that attempt's lease (same worker, series, attempt number
-- and lease end: a claim that a database crash undid reuses its attempt number, and
-- the same worker may take it again, but never with the same lease end); otherwise the lease was taken over, or this batch was already applied
-- before a lost reply, and the outcome is logged as a late result that changes
-- nothing. retry_after NULL means the delivery is finished. An 'unknown' outcome
-- is a send handed back at shutdown: it is logged as abandoned, like a lease that
-- ran out, and with retry_after 0 the delivery is due again at once.
-- The batch arrives as one JSON array: psycopg dumps Python lists element by element,
-- which cost the worker more than the statement costs the database.
WITH r AS (
    SELECT *
    FROM jsonb_to_recordset(%(results)s::jsonb)
         AS r (delivery_id uuid, event_id uuid, endpoint_id text, org_id text, series int, attempt int,
               outcome delivery_outcome, retry_after float8, started_at timestamptz, duration_ms float8,
               http_status int, error_class text, error_message text, response_excerpt text,
               lease_until timestamptz)
),
finished AS (
    DELETE FROM delivery_queue q USING r
    WHERE q.delivery_id = r.delivery_id AND q.series = r.series AND q.attempt = r.attempt
      AND q.leased_by = %(worker_id)s AND q.due_at = r.lease_until
      AND r.retry_after IS NULL
    RETURNING q.delivery_id, NULL::timestamptz AS next_attempt_at
),
retrying AS (
    UPDATE delivery_queue q
    SET due_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => r.retry_after),
        leased_by = NULL
    FROM r
    WHERE q.delivery_id = r.delivery_id AND q.series = r.series AND q.attempt = r.attempt
      AND q.leased_by = %(worker_id)s AND q.due_at = r.lease_until
      AND r.retry_after IS NOT NULL
    RETURNING q.delivery_id, q.due_at AS next_attempt_at
),
applied AS (
    SELECT * FROM finished UNION ALL SELECT * FROM retrying
)
INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, outcome,
                          next_attempt_at, worker_id, started_at, duration_ms, http_status,
                          error_class, error_message, response_excerpt)
SELECT CASE WHEN a.delivery_id IS NULL THEN 'late_result'::delivery_fact_kind
            WHEN r.outcome = 'unknown' THEN 'attempt_abandoned'::delivery_fact_kind
            ELSE 'attempt_finished'::delivery_fact_kind END,
       r.delivery_id, r.event_id, r.endpoint_id, r.org_id, r.series, r.attempt, r.outcome,
       a.next_attempt_at, %(worker_id)s, r.started_at, r.duration_ms, r.http_status,
       r.error_class, r.error_message, r.response_excerpt
FROM r LEFT JOIN applied a ON a.delivery_id = r.delivery_id
RETURNING delivery_id, kind, next_attempt_at

-- name: update_endpoint_health
-- Keep each endpoint's failing_since: cleared by a success, set by the first of a
-- run of failures. An endpoint that answered 410 Gone, or has failed without one
-- success for disable_after seconds, is disabled with the reason. Rows that would
-- not change are not written. Returns the endpoints it disabled, for the caller to
-- announce in the same transaction.
WITH h AS (
    SELECT *
    FROM unnest(%(endpoint_ids)s::text[], %(succeeded)s::bool[], %(gone)s::bool[],
                %(first_failure)s::timestamptz[])
         AS h (endpoint_id, succeeded, gone, first_failure)
),
judged AS (
    SELECT w.id, h.succeeded, h.gone,
           coalesce(w.failing_since, h.first_failure) AS failing_since,
           NOT h.succeeded AND coalesce(w.failing_since, h.first_failure)
               <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(disable_after)s) AS expired,
           w.failing_since IS NULL AS was_healthy
    FROM webhook_endpoint w JOIN h ON h.endpoint_id = w.id
    WHERE w.enabled AND w.deleted_at IS NULL
),
updated AS (
    UPDATE webhook_endpoint w
    SET failing_since = CASE WHEN j.succeeded THEN NULL ELSE j.failing_since END,
        enabled = NOT (j.gone OR j.expired),
        disabled_reason = CASE
            WHEN j.gone THEN 'the receiver answered 410 Gone'
            WHEN j.expired THEN 'every attempt failed since ' || to_char(j.failing_since AT TIME ZONE 'UTC',
                                                                       'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        END,
        updated_at = now()
    FROM judged j
    WHERE w.id = j.id
      AND (j.gone OR j.expired OR (j.succeeded AND NOT j.was_healthy) OR (NOT j.succeeded AND j.was_healthy))
    RETURNING w.id, w.org_id, w.url, w.enabled, w.disabled_reason, w.updated_at
)
SELECT id, org_id, url, disabled_reason, updated_at FROM updated WHERE NOT enabled

-- name: seconds_until_due
-- Seconds until the earliest open delivery becomes due (a retry, or a lease
-- running out), measured on the database's clock; NULL when nothing is open.
SELECT extract(epoch FROM min(due_at) - coalesce(%(now)s::timestamptz, now()))::float8
FROM delivery_queue

-- name: insert_endpoint
-- Registers nothing (no row returned) when the org already has max_endpoints.
INSERT INTO webhook_endpoint (id, org_id, url, secret, event_types, description)
SELECT %(id)s, %(org_id)s, %(url)s, %(secret)s, %(event_types)s, %(description)s
WHERE (SELECT count(*) FROM webhook_endpoint
       WHERE org_id = %(org_id)s AND deleted_at IS NULL) < %(max_endpoints)s
RETURNING id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason

-- name: list_endpoints
SELECT id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason
FROM webhook_endpoint
WHERE deleted_at IS NULL AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s)
ORDER BY created_at, id

-- name: set_endpoint_enabled
-- Enabling starts afresh: no reason to be disabled, no run of failures.
UPDATE webhook_endpoint
SET enabled = %(enabled)s, updated_at = now(),
    disabled_reason = CASE WHEN %(enabled)s THEN NULL ELSE disabled_reason END,
    failing_since = CASE WHEN %(enabled)s THEN NULL ELSE failing_since END
WHERE id = %(id)s AND deleted_at IS NULL
RETURNING id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason

-- name: lock_migrations
-- Pods starting together must not apply the schema concurrently. Partition
-- maintenance and retention take the same lock, one transaction at a time.
SELECT pg_advisory_xact_lock(hashtext('deliverer.migrate'))

-- name: try_lock_migrations
-- The same lock for the deliverers' periodic partition maintenance: a pod that
-- finds it taken skips its turn instead of waiting.
SELECT pg_try_advisory_xact_lock(hashtext('deliverer.migrate'))

-- name: partition_list
-- The partitions of the append-only tables and the times they cover, read from
-- their bounds: low NULL is MINVALUE (a table attached by the upgrade), high NULL
-- the DEFAULT partition. guarded: it has a trigger refusing TRUNCATE.
WITH bound AS (
    SELECT i.inhparent::regclass::text AS parent, c.oid, c.relname::text AS name,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$FROM \('([^']*)'\)$re$) AS low,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$TO \('([^']*)'\)$re$) AS high
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent IN ('outbox_event'::regclass, 'delivery_log'::regclass)
),
times AS (
    SELECT parent, oid, name,
           CASE WHEN parent = 'delivery_log' THEN low::timestamptz
                ELSE to_timestamp(('x' || left(replace(low, '-', ''), 12))::bit(48)::bigint / 1000.0) END AS low,
           CASE WHEN parent = 'delivery_log' THEN high::timestamptz
                ELSE to_timestamp(('x' || left(replace(high, '-', ''), 12))::bit(48)::bigint / 1000.0) END AS high
    FROM bound
)
SELECT parent, name, low, high,
       EXISTS (SELECT 1 FROM pg_trigger t
               WHERE t.tgrelid = times.oid AND t.tgfoid = 'outbox_refuse_change'::regproc
                 AND t.tgtype & 32 <> 0) AS guarded
FROM times
ORDER BY parent, high NULLS LAST, low NULLS FIRST

-- name: partition_create
-- One partition, created on its own and then attached: attaching locks the parent
-- only against other DDL, where CREATE TABLE ... PARTITION OF would hold every
-- producer's INSERT until commit. Attaching adds the parent's indexes and row
-- triggers; partition_guard adds the TRUNCATE trigger.
CREATE TABLE {partition} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES FROM ({low}) TO ({high})

-- name: partition_guard
-- TRUNCATE triggers are not inherited: each partition refuses TRUNCATE itself.
CREATE OR REPLACE TRIGGER {trigger} BEFORE TRUNCATE ON {partition}
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_refuse_change()

-- name: partition_default_has_outbox_event
-- Events in [low, high) that went to the DEFAULT partition: a partition for that
-- range cannot be attached over them.
SELECT EXISTS (SELECT 1 FROM outbox_event_default WHERE id >= %(low)s AND id < %(high)s)

-- name: partition_default_has_delivery_log
SELECT EXISTS (SELECT 1 FROM delivery_log_default WHERE recorded_at >= %(low)s AND recorded_at < %(high)s)

-- name: partition_default_rows
SELECT (SELECT count(*) FROM outbox_event_default), (SELECT count(*) FROM delivery_log_default)

-- name: partition_open_outbox_event
-- Open deliveries of events in [low, high); low NULL: from the beginning.
SELECT count(*) FROM delivery_queue
WHERE event_id < %(high)s AND (%(low)s::uuid IS NULL OR event_id >= %(low)s)

-- name: partition_open_delivery_log
-- Open deliveries with a fact recorded in [low, high); low NULL: from the beginning.
SELECT count(*) FROM delivery_queue q
WHERE EXISTS (SELECT 1 FROM delivery_log l
              WHERE l.delivery_id = q.delivery_id AND l.recorded_at < %(high)s
                AND (%(low)s::timestamptz IS NULL OR l.recorded_at >= %(low)s))

-- name: partition_exists
SELECT to_regclass(%(name)s) IS NOT NULL

-- name: partition_lock_for_drop
-- The parent is locked before the partition is checked for open deliveries, so no
-- replay can reopen one between the check and the drop (a replay reads the parent).
-- The queue is locked first because a projection rebuild holds it exclusively
-- while it reads the log: the other order could deadlock with it.
LOCK TABLE delivery_queue IN ACCESS SHARE MODE;
LOCK TABLE ONLY {parent} IN ACCESS EXCLUSIVE MODE

-- name: partition_drop
DROP TABLE {partition}

-- name: partition_ddl_timeouts
-- Partition DDL queues every later statement on the table behind its lock: give up
-- after a short wait, and leave the partition for the next run, rather than stall
-- producers.
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '10s'

-- name: dedupe_prune
-- Forget up to %(limit)s dedupe keys recorded before %(before)s, oldest first. SKIP
-- LOCKED lets two retention runs share the work instead of waiting on each other.
DELETE FROM outbox_dedupe d
USING (SELECT org_id, dedupe_key FROM outbox_dedupe
       WHERE created_at < %(before)s
       ORDER BY created_at
       LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED) AS old
WHERE d.org_id = old.org_id AND d.dedupe_key = old.dedupe_key

-- name: dedupe_count
SELECT count(*) FROM outbox_dedupe WHERE created_at < %(before)s

-- name: truncate_delivery_queue
TRUNCATE delivery_queue

-- name: rebuild_delivery_queue
-- The projection: every delivery the log says is still open.
INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by)
SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by
FROM delivery_state
WHERE state NOT IN ('delivered', 'failed')

-- name: diff_delivery_queue
-- Rows where the live queue and the fold of the log disagree; empty when consistent.
WITH live AS (
    SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by
    FROM delivery_queue
), folded AS (
    SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by
    FROM delivery_state WHERE state NOT IN ('delivered', 'failed')
)
(SELECT 'only_live' AS side, * FROM (SELECT * FROM live EXCEPT ALL SELECT * FROM folded) x)
UNION ALL
(SELECT 'only_log' AS side, * FROM (SELECT * FROM folded EXCEPT ALL SELECT * FROM live) y)
ORDER BY delivery_id, side

-- name: delivery_summary
-- Every delivery's derived state with its event and endpoint, newest events first.
SELECT s.delivery_id, s.event_id, e.event_type, s.endpoint_id, w.url, s.state, s.series, s.attempt,
       s.due_at, s.updated_at
FROM delivery_state s
JOIN outbox_event e ON e.id = s.event_id
JOIN webhook_endpoint w ON w.id = s.endpoint_id
WHERE (%(org_id)s::text IS NULL OR s.org_id = %(org_id)s)
ORDER BY e.created_at DESC, w.url
LIMIT %(limit)s

-- name: attempt_history
-- Attempts in the order they were recorded, with their event and endpoint.
SELECT l.seq, coalesce(l.started_at, l.recorded_at), l.kind, l.delivery_id, l.event_id, e.event_type, l.endpoint_id,
       l.series, l.attempt, l.outcome, l.http_status, l.duration_ms, l.error_class,
       l.error_message, l.next_attempt_at, l.worker_id
FROM delivery_log l
JOIN outbox_event e ON e.id = l.event_id
WHERE l.kind IN ('attempt_finished', 'attempt_abandoned', 'late_result')
  AND (%(org_id)s::text IS NULL OR l.org_id = %(org_id)s)
ORDER BY l.seq

-- name: due_backlog
-- The queue's due backlog for the dashboards: how many deliveries are due now
-- (counted up to a cap, so a huge backlog costs a bounded scan) and how long the
-- oldest has waited. Leases that ran out are due too: their worker is gone.
SELECT (SELECT count(*) FROM (SELECT 1 FROM delivery_queue WHERE due_at <= now() LIMIT %(cap)s) AS due),
       coalesce(extract(epoch FROM now() - min(due_at)), 0)::float8
FROM delivery_queue
WHERE due_at <= now()

-- name: insert_api_key
INSERT INTO api_key (id, org_id, key_hash, prefix) VALUES (%(id)s, %(org_id)s, %(key_hash)s, %(prefix)s)
RETURNING id, org_id, prefix, created_at

-- name: org_for_api_key
SELECT org_id, id FROM api_key WHERE key_hash = %(key_hash)s AND revoked_at IS NULL

-- name: get_endpoint
SELECT id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason
FROM webhook_endpoint
WHERE id = %(id)s AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s) AND deleted_at IS NULL

-- name: update_endpoint
-- NULL leaves a field as it is; event_types changes only when set_events is true
-- (NULL event_types means every type).
UPDATE webhook_endpoint
SET url = coalesce(%(url)s, url),
    event_types = CASE WHEN %(set_events)s THEN %(event_types)s::text[] ELSE event_types END,
    description = coalesce(%(description)s, description),
    enabled = coalesce(%(enabled)s, enabled),
    disabled_reason = CASE WHEN %(enabled)s THEN NULL ELSE disabled_reason END,
    failing_since = CASE WHEN %(enabled)s THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = %(id)s AND org_id = %(org_id)s AND deleted_at IS NULL
RETURNING id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason

-- name: delete_endpoint
-- Endpoints are kept for the log's sake; deleted ones get nothing more.
UPDATE webhook_endpoint SET deleted_at = now(), enabled = false, updated_at = now()
WHERE id = %(id)s AND org_id = %(org_id)s AND deleted_at IS NULL
RETURNING id

-- name: rotate_endpoint_secret
-- The old secret stays valid for grace_seconds: requests are signed with both meanwhile.
UPDATE webhook_endpoint
SET previous_secret = secret,
    previous_secret_expires_at = now() + make_interval(secs => %(grace_seconds)s),
    secret = %(secret)s,
    updated_at = now()
WHERE id = %(id)s AND org_id = %(org_id)s AND deleted_at IS NULL
RETURNING id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason

-- name: endpoint_secrets
-- Every stored secret, for re-sealing under the current key. FOR UPDATE: a
-- rotation running meanwhile waits instead of being overwritten.
SELECT id, secret, previous_secret FROM webhook_endpoint ORDER BY id FOR UPDATE

-- name: store_sealed_secrets
UPDATE webhook_endpoint SET secret = %(secret)s, previous_secret = %(previous_secret)s WHERE id = %(id)s

-- name: find_endpoint_by_url
SELECT id, org_id, url, secret,
       CASE WHEN previous_secret_expires_at > now() THEN previous_secret END, enabled
FROM webhook_endpoint
WHERE (%(org_id)s::text IS NULL OR org_id = %(org_id)s) AND url = %(url)s AND deleted_at IS NULL
ORDER BY enabled DESC, created_at
LIMIT 1

-- name: endpoint_for_test
SELECT id, org_id, url, secret,
       CASE WHEN previous_secret_expires_at > now() THEN previous_secret END, enabled
FROM webhook_endpoint
WHERE id = %(id)s AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s) AND deleted_at IS NULL

-- name: publish_test_event
-- A webhook.test event for one endpoint only, already leased by the sender that
-- asked for it, so its answer does not wait behind other deliveries. Should that
-- sender die, the lease runs out and the deliverers retry it like any other.
WITH event AS (
    INSERT INTO outbox_event (id, org_id, event_type, body)
    VALUES (%(event_id)s, %(org_id)s, 'webhook.test', %(body)s)
    RETURNING id, org_id, created_at
),
delivery AS (
    SELECT gen_random_uuid() AS delivery_id, e.id AS event_id, e.org_id, e.created_at,
           coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s) AS lease_end
    FROM event e
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by)
    SELECT delivery_id, event_id, %(endpoint_id)s, org_id, 1, 1, lease_end, %(worker_id)s FROM delivery
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                              next_attempt_at, worker_id, started_at)
    SELECT k.kind, d.delivery_id, d.event_id, %(endpoint_id)s, d.org_id, 1, k.attempt,
           CASE k.kind WHEN 'scheduled' THEN d.created_at ELSE d.lease_end END,
           CASE k.kind WHEN 'attempt_started' THEN %(worker_id)s END,
           CASE k.kind WHEN 'attempt_started' THEN coalesce(%(now)s::timestamptz, now()) END
    FROM delivery d
    CROSS JOIN (VALUES ('scheduled'::delivery_fact_kind, 0), ('attempt_started', 1)) AS k (kind, attempt)
)
SELECT delivery_id, event_id, created_at, lease_end FROM delivery

-- name: lock_deliveries
-- Replays of one delivery take turns, so two cannot both open the same new series.
SELECT pg_advisory_xact_lock(hashtextextended(id::text, 0))
FROM unnest(%(delivery_ids)s::uuid[]) AS id
ORDER BY id

-- name: replay_deliveries
-- Start a new attempt series for each finished delivery among delivery_ids (of the
-- org, unless org_id is NULL): a replay_requested fact and a queue row due now.
-- Deliveries still being attempted are left as they are.
WITH finished AS (
    SELECT delivery_id, event_id, endpoint_id, org_id, series
    FROM delivery_state
    WHERE delivery_id = ANY (%(delivery_ids)s::uuid[])
      AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s)
      AND state IN ('delivered', 'failed')
      -- Retention may have dropped the event while facts of its deliveries remain.
      AND EXISTS (SELECT 1 FROM outbox_event e WHERE e.id = delivery_state.event_id)
),
reopened AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
    SELECT delivery_id, event_id, endpoint_id, org_id, series + 1, 0, coalesce(%(now)s::timestamptz, now())
    FROM finished
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING delivery_id, event_id, endpoint_id, org_id, series, due_at
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                              next_attempt_at, actor)
    SELECT 'replay_requested', delivery_id, event_id, endpoint_id, org_id, series, 0, due_at, %(actor)s
    FROM reopened
),
woken AS (
    SELECT pg_notify('outbox_delivery', '') FROM (SELECT 1 FROM reopened LIMIT 1) AS any_reopened
)
SELECT delivery_id, series, (SELECT count(*) FROM woken) AS notified FROM reopened

-- name: failed_deliveries_of_endpoint
-- Failed deliveries of one endpoint whose events were created in [since, until).
SELECT delivery_id
FROM delivery_state
WHERE delivery_id = ANY (ARRAY(
        SELECT l.delivery_id
        FROM delivery_log l
        JOIN outbox_event e ON e.id = l.event_id
        WHERE l.endpoint_id = %(endpoint_id)s AND l.kind = 'scheduled'
          AND e.created_at >= %(since)s AND e.created_at < %(until)s))
  AND state = 'failed'
ORDER BY delivery_id

-- name: attempts
-- Attempts (finished, abandoned or late), newest first, before a seq cursor, with
-- optional filters; NULL parameters do not filter.
SELECT l.seq, coalesce(l.started_at, l.recorded_at) AS at, e.event_type, l.event_id, l.delivery_id,
       l.endpoint_id, l.series, l.attempt, l.kind, l.outcome, l.http_status, l.duration_ms,
       l.error_class, l.error_message, l.next_attempt_at
FROM delivery_log l
JOIN outbox_event e ON e.id = l.event_id
WHERE l.kind IN ('attempt_finished', 'attempt_abandoned', 'late_result')
  AND (%(org_id)s::text IS NULL OR l.org_id = %(org_id)s)
  AND (%(endpoint_id)s::text IS NULL OR l.endpoint_id = %(endpoint_id)s)
  AND (%(before_seq)s::bigint IS NULL OR l.seq < %(before_seq)s)
  AND (%(event_type)s::text IS NULL OR e.event_type = %(event_type)s)
  AND (%(outcome)s::text IS NULL OR l.outcome = %(outcome)s::delivery_outcome)
  AND (%(since)s::timestamptz IS NULL OR l.recorded_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR l.recorded_at < %(until)s)
ORDER BY l.seq DESC
LIMIT %(limit)s

-- name: get_delivery
SELECT s.delivery_id, s.event_id, e.event_type, s.endpoint_id, s.org_id, s.state, s.series, s.attempt,
       s.due_at, s.updated_at, e.created_at
FROM delivery_state s
JOIN outbox_event e ON e.id = s.event_id
WHERE s.delivery_id = %(delivery_id)s AND (%(org_id)s::text IS NULL OR s.org_id = %(org_id)s)

-- name: delivery_history
SELECT seq, recorded_at, kind, series, attempt, outcome, started_at, duration_ms, http_status,
       error_class, error_message, response_excerpt, next_attempt_at, worker_id, actor
FROM delivery_log
WHERE delivery_id = %(delivery_id)s
ORDER BY seq

-- name: get_event
SELECT id, org_id, event_type, body, created_at
FROM outbox_event
WHERE id = %(event_id)s AND org_id = %(org_id)s

-- name: event_deliveries
SELECT delivery_id, endpoint_id, state, series, attempt, due_at, updated_at
FROM delivery_state
WHERE delivery_id = ANY (ARRAY(
        SELECT delivery_id FROM delivery_log WHERE event_id = %(event_id)s AND kind = 'scheduled'))
ORDER BY endpoint_id

-- name: events_after
-- An org's events in commit order after the cursor (txid, id). Only transactions
-- older than every transaction still running are read, so an event committed late
-- by a long transaction is never skipped: it waits until it can come in order.
SELECT id, event_type, body, created_at, txid::text
FROM outbox_event
WHERE org_id = %(org_id)s
  AND (txid, id) > (%(after_txid)s::xid8, %(after_id)s::uuid)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
  AND (%(event_types)s::text[] IS NULL OR event_type = ANY (%(event_types)s::text[]))
ORDER BY txid, id
LIMIT %(limit)s

-- name: demo_create_tables
-- The demo's stand-in for an application's own tables.
CREATE TABLE IF NOT EXISTS demo_job (id text PRIMARY KEY, org_id text NOT NULL, status text NOT NULL);
CREATE TABLE IF NOT EXISTS demo_credit (org_id text PRIMARY KEY, balance integer NOT NULL)

-- name: demo_save_job
INSERT INTO demo_job (id, org_id, status) VALUES (%(id)s, %(org_id)s, %(status)s)
ON CONFLICT (id) DO UPDATE SET status = excluded.status

-- name: demo_set_balance
INSERT INTO demo_credit (org_id, balance) VALUES (%(org_id)s, %(balance)s)
ON CONFLICT (org_id) DO UPDATE SET balance = excluded.balance

-- name: demo_debit_credits
-- Debit under the row lock, returning the balance before and after: what
-- outbox.publish_balance_change needs to see each threshold crossing exactly once.
UPDATE demo_credit SET balance = balance - %(amount)s WHERE org_id = %(org_id)s
RETURNING balance + %(amount)s, balance

-- name: open_deliveries
SELECT count(*) FROM delivery_queue WHERE org_id = %(org_id)s
