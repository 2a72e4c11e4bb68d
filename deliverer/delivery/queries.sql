-- The hot path's SQL: claiming due deliveries, recording outcomes, endpoint health, the backlog gauges. Blocks start with "-- name: <name>".
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

-- name: due_backlog
-- The queue's due backlog for the dashboards: how many deliveries are due now
-- (counted up to a cap, so a huge backlog costs a bounded scan) and how long the
-- oldest has waited. Leases that ran out are due too: their worker is gone.
SELECT (SELECT count(*) FROM (SELECT 1 FROM delivery_queue WHERE due_at <= now() LIMIT %(cap)s) AS due),
       coalesce(extract(epoch FROM now() - min(due_at)), 0)::float8
FROM delivery_queue
WHERE due_at <= now()
