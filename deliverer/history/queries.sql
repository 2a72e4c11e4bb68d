-- The log side: the queue's projection and its rebuild, delivery logs, replay and test events. Blocks start with "-- name: <name>".
-- Statements that schedule or expire take %(now)s: NULL means the database's
-- clock, a timestamp lets tests drive time instead of sleeping.
-- delivery_log.kind and outcome are enum types (see schema.sql). A quoted literal,
-- or a parameter used only there, is read as the enum; any other text (a column, a
-- CASE or VALUES of literals, a parameter also cast to text) needs a cast to be
-- compared with them, and gets one here where it is written too: a constant is then
-- converted once, not row by row.

-- name: truncate_delivery_queue
TRUNCATE delivery_queue

-- name: rebuild_delivery_queue
-- The projection for the delivery ids in [low, high]: every delivery the log says is still open,
-- as it was before the leases running now were taken (their attempts are not facts yet).
-- The range is on delivery_state's DISTINCT ON key, so it reaches delivery_log's index.
-- A delivery to an endpoint that delivers in order takes its event's place in that
-- order (the publishing transaction; a replay had put it after what was waiting then).
INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by,
                            ordering_key, txid)
SELECT s.delivery_id, s.event_id, s.endpoint_id, s.org_id, s.series, s.attempt, s.due_at, s.leased_by,
       CASE WHEN w.ordering = 'fifo' THEN coalesce(e.ordering_key, '') END,
       CASE WHEN w.ordering = 'fifo' THEN e.txid END
FROM delivery_state s
LEFT JOIN outbox_event e ON e.id = s.event_id
LEFT JOIN webhook_endpoint w ON w.id = s.endpoint_id
WHERE s.state NOT IN ('delivered', 'failed')
  AND s.delivery_id BETWEEN %(low)s AND %(high)s

-- name: diff_delivery_queue
-- Rows where the live queue and the fold of the log disagree; empty when consistent.
-- A leased row is an attempt in progress, which the log learns of when it ends: the
-- log only has to hold its delivery open (its series), whatever the lease changed.
-- The fold is of the whole log: computed once, for both sides.
WITH fold AS (
    SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by
    FROM delivery_state WHERE state NOT IN ('delivered', 'failed')
), leases AS (
    SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by
    FROM delivery_queue WHERE leased_by IS NOT NULL
), live AS (
    SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by
    FROM delivery_queue WHERE leased_by IS NULL
), folded AS (
    SELECT * FROM fold f
    WHERE NOT EXISTS (SELECT FROM leases l WHERE l.delivery_id = f.delivery_id AND l.series = f.series)
), leased_unknown AS (
    SELECT * FROM leases l
    WHERE NOT EXISTS (SELECT FROM fold f WHERE f.delivery_id = l.delivery_id AND f.series = l.series)
)
(SELECT 'only_live' AS side, * FROM (SELECT * FROM live EXCEPT ALL SELECT * FROM folded
                                     UNION ALL SELECT * FROM leased_unknown) x)
UNION ALL
(SELECT 'only_log' AS side, * FROM (SELECT * FROM folded EXCEPT ALL SELECT * FROM live) y)
ORDER BY delivery_id, side

-- name: delivery_summary
-- Every delivery's derived state with its event and endpoint, newest events first.
SELECT s.delivery_id, s.event_id, e.event_type, s.endpoint_id, w.url, s.state, s.series, s.attempt,
       s.due_at, s.updated_at
FROM delivery_current s
JOIN outbox_event e ON e.id = s.event_id
JOIN webhook_endpoint w ON w.id = s.endpoint_id
WHERE (%(org_id)s::text IS NULL OR s.org_id = %(org_id)s)
ORDER BY e.created_at DESC, w.url
LIMIT %(limit)s

-- name: attempt_history
-- Attempts in the order they were recorded, with their event's type: the columns of attempts.
SELECT l.seq, coalesce(l.started_at, l.recorded_at) AS at, e.event_type, l.event_id, l.delivery_id,
       l.endpoint_id, l.series, l.attempt, l.kind, l.outcome, l.http_status, l.duration_ms,
       l.error_class, l.error_message, l.next_attempt_at
FROM delivery_log l
JOIN outbox_event e ON e.id = l.event_id
WHERE l.kind IN ('attempt_finished', 'attempt_abandoned', 'late_result')
  AND (%(org_id)s::text IS NULL OR l.org_id = %(org_id)s)
ORDER BY l.seq

-- name: publish_test_event
-- A webhook.test event for one endpoint only, already leased by the sender that
-- asked for it, so its answer does not wait behind other deliveries. Should that
-- sender die, the lease runs out and the deliverers retry it like any other.
WITH event AS (
    INSERT INTO outbox_event (id, org_id, event_type, body, traceparent, tracestate)
    VALUES (%(event_id)s, %(org_id)s, 'webhook.test', %(body)s, %(traceparent)s, %(tracestate)s)
    RETURNING id, org_id, created_at
),
delivery AS (
    SELECT gen_random_uuid() AS delivery_id, e.id AS event_id, e.org_id, e.created_at,
           coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s) AS lease_end
    FROM event e
),
queued AS (
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by,
                                leased_at)
    SELECT delivery_id, event_id, %(endpoint_id)s, org_id, 1, 1, lease_end, %(worker_id)s,
           coalesce(%(now)s::timestamptz, now())
    FROM delivery
),
logged AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, next_attempt_at)
    SELECT 'scheduled', delivery_id, event_id, %(endpoint_id)s, org_id, 1, 0, created_at FROM delivery
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
-- Deliveries still being attempted are left as they are. To an endpoint that
-- delivers in order, a replay goes after what its key has waiting (its place is
-- this transaction), in event order among the replayed.
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
    INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at,
                                ordering_key, txid)
    SELECT f.delivery_id, f.event_id, f.endpoint_id, f.org_id, f.series + 1, 0, coalesce(%(now)s::timestamptz, now()),
           CASE WHEN w.ordering = 'fifo' THEN coalesce(e.ordering_key, '') END,
           CASE WHEN w.ordering = 'fifo' THEN pg_current_xact_id() END
    FROM finished f
    JOIN outbox_event e ON e.id = f.event_id
    JOIN webhook_endpoint w ON w.id = f.endpoint_id
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
       s.due_at, s.updated_at, e.created_at AS event_created_at
FROM delivery_current s
JOIN outbox_event e ON e.id = s.event_id
WHERE s.delivery_id = %(delivery_id)s AND (%(org_id)s::text IS NULL OR s.org_id = %(org_id)s)

-- name: delivery_history
SELECT seq, recorded_at, kind, series, attempt, outcome, started_at, duration_ms, http_status,
       error_class, error_message, response_excerpt, next_attempt_at, worker_id, actor
FROM delivery_log
WHERE delivery_id = %(delivery_id)s
ORDER BY seq

-- name: get_event
SELECT id, event_type, body, created_at
FROM outbox_event
WHERE id = %(event_id)s AND org_id = %(org_id)s

-- name: event_deliveries
SELECT delivery_id, endpoint_id, state, series, attempt, updated_at
FROM delivery_current
WHERE delivery_id = ANY (ARRAY(
        SELECT delivery_id FROM delivery_log WHERE event_id = %(event_id)s AND kind = 'scheduled'))
ORDER BY endpoint_id

-- name: events_after
-- An org's events in commit order after the cursor (txid, id). Only transactions
-- older than every transaction still running are read, so an event committed late
-- by a long transaction is never skipped: it waits until it can come in order.
SELECT id, event_type, body, created_at, txid::text AS txid
FROM outbox_event
WHERE org_id = %(org_id)s
  AND (txid, id) > (%(after_txid)s::xid8, %(after_id)s::uuid)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
  AND (%(event_types)s::text[] IS NULL OR event_type = ANY (%(event_types)s::text[]))
ORDER BY txid, id
LIMIT %(limit)s

-- name: open_deliveries
SELECT count(*) FROM delivery_queue WHERE org_id = %(org_id)s
