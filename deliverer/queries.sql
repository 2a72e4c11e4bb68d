-- All SQL of the deliverer. Blocks start with "-- name: <name>".
-- Statements that schedule or expire take %(now)s: NULL means the database's
-- clock, a timestamp lets tests drive time instead of sleeping.

-- name: claim_deliveries
-- Lease up to %(limit)s due deliveries for one worker, in one statement. A due row
-- that is still leased belongs to a worker whose lease ran out: that attempt is
-- recorded as abandoned with an unknown outcome, and if it was the last attempt
-- allowed the delivery fails instead of being leased again.
WITH due AS (
    SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, leased_by,
           leased_by IS NOT NULL AND attempt >= %(max_attempts)s AS exhausted
    FROM delivery_queue
    WHERE due_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY due_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
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
       w.enabled AND w.deleted_at IS NULL AS endpoint_enabled
FROM leased l
JOIN outbox_event e ON e.id = l.event_id
JOIN webhook_endpoint w ON w.id = l.endpoint_id

-- name: record_results
-- Write back a batch of attempt outcomes. An outcome only changes the delivery if
-- the worker still holds that attempt's lease (same worker, series and attempt
-- number); otherwise the lease was taken over, or this batch was already applied
-- before a lost reply, and the outcome is logged as a late result that changes
-- nothing. retry_after NULL means the delivery is finished.
WITH r AS (
    SELECT *
    FROM unnest(%(delivery_ids)s::uuid[], %(event_ids)s::uuid[], %(endpoint_ids)s::text[],
                %(org_ids)s::text[], %(series)s::int[], %(attempts)s::int[], %(outcomes)s::text[],
                %(retry_after)s::float8[], %(started_at)s::timestamptz[], %(duration_ms)s::float8[],
                %(http_status)s::int[], %(error_class)s::text[], %(error_message)s::text[],
                %(response_excerpt)s::text[])
         AS r (delivery_id, event_id, endpoint_id, org_id, series, attempt, outcome, retry_after,
               started_at, duration_ms, http_status, error_class, error_message, response_excerpt)
),
finished AS (
    DELETE FROM delivery_queue q USING r
    WHERE q.delivery_id = r.delivery_id AND q.series = r.series AND q.attempt = r.attempt
      AND q.leased_by = %(worker_id)s AND r.retry_after IS NULL
    RETURNING q.delivery_id, NULL::timestamptz AS next_attempt_at
),
retrying AS (
    UPDATE delivery_queue q
    SET due_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => r.retry_after),
        leased_by = NULL
    FROM r
    WHERE q.delivery_id = r.delivery_id AND q.series = r.series AND q.attempt = r.attempt
      AND q.leased_by = %(worker_id)s AND r.retry_after IS NOT NULL
    RETURNING q.delivery_id, q.due_at AS next_attempt_at
),
applied AS (
    SELECT * FROM finished UNION ALL SELECT * FROM retrying
)
INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, outcome,
                          next_attempt_at, worker_id, started_at, duration_ms, http_status,
                          error_class, error_message, response_excerpt)
SELECT CASE WHEN a.delivery_id IS NULL THEN 'late_result' ELSE 'attempt_finished' END,
       r.delivery_id, r.event_id, r.endpoint_id, r.org_id, r.series, r.attempt, r.outcome,
       a.next_attempt_at, %(worker_id)s, r.started_at, r.duration_ms, r.http_status,
       r.error_class, r.error_message, r.response_excerpt
FROM r LEFT JOIN applied a ON a.delivery_id = r.delivery_id
RETURNING delivery_id, kind, next_attempt_at

-- name: seconds_until_due
-- Seconds until the earliest open delivery becomes due (a retry, or a lease
-- running out), measured on the database's clock; NULL when nothing is open.
SELECT extract(epoch FROM min(due_at) - coalesce(%(now)s::timestamptz, now()))::float8
FROM delivery_queue

-- name: insert_endpoint
INSERT INTO webhook_endpoint (id, org_id, url, secret, event_types, description)
VALUES (%(id)s, %(org_id)s, %(url)s, %(secret)s, %(event_types)s, %(description)s)
RETURNING id, org_id, url, event_types, description, enabled, created_at

-- name: list_endpoints
SELECT id, org_id, url, event_types, description, enabled, created_at
FROM webhook_endpoint
WHERE deleted_at IS NULL AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s)
ORDER BY created_at, id

-- name: set_endpoint_enabled
UPDATE webhook_endpoint SET enabled = %(enabled)s, updated_at = now()
WHERE id = %(id)s AND deleted_at IS NULL
RETURNING id, org_id, url, event_types, description, enabled, created_at

-- name: lock_migrations
-- Pods starting together must not apply the schema concurrently.
SELECT pg_advisory_xact_lock(hashtext('deliverer.migrate'))

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

-- name: open_deliveries
SELECT count(*) FROM delivery_queue WHERE org_id = %(org_id)s
