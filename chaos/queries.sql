-- All SQL of the fault suite. Blocks start with "-- name: <name>".
-- Tampering statements are expected to fail: they prove the log is append-only.

-- name: tamper_update_log
UPDATE delivery_log SET outcome = 'succeeded' WHERE seq = (SELECT min(seq) FROM delivery_log)

-- name: tamper_delete_log
DELETE FROM delivery_log WHERE seq = (SELECT min(seq) FROM delivery_log)

-- name: tamper_truncate_log
TRUNCATE delivery_log

-- name: tamper_update_event
UPDATE outbox_event SET body = '{}' WHERE id = (SELECT id FROM outbox_event ORDER BY id LIMIT 1)

-- name: tamper_delete_event
DELETE FROM outbox_event WHERE id = (SELECT id FROM outbox_event ORDER BY id LIMIT 1)

-- name: tamper_truncate_event
TRUNCATE outbox_event CASCADE

-- name: open_deliveries
-- Deliveries not yet delivered or failed.
SELECT count(*) FROM delivery_queue

-- name: attempt_facts
-- Every attempt fact: who made it and how it ended, for explaining duplicates.
SELECT delivery_id, attempt, kind, outcome, worker_id, error_class, error_message, http_status,
       started_at, recorded_at, next_attempt_at
FROM delivery_log
WHERE kind IN ('attempt_finished', 'attempt_abandoned', 'late_result')
ORDER BY delivery_id, attempt, seq

-- name: final_states
-- The derived state of every delivery, with its event and endpoint URL.
SELECT s.delivery_id, s.event_id, w.url, s.state, s.attempt
FROM delivery_state s
JOIN webhook_endpoint w ON w.id = s.endpoint_id

-- name: deliverer_backends
-- Terminate every connection a deliverer process holds (application_name "deliverer <id>").
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE application_name LIKE 'deliverer %' AND datname = current_database()

-- name: producer_table
-- The application's own table next to which the producers publish.
CREATE TABLE IF NOT EXISTS chaos_job (id text PRIMARY KEY, status text NOT NULL)

-- name: producer_save_job
INSERT INTO chaos_job (id, status) VALUES (%(id)s, %(status)s)
ON CONFLICT (id) DO UPDATE SET status = excluded.status

-- name: attempts_by_url
-- One org's attempts (their start and outcome), with the endpoint URL, in log order.
SELECT w.url, l.attempt, l.kind, l.error_class, l.http_status, l.started_at, l.recorded_at, l.next_attempt_at
FROM delivery_log l
JOIN webhook_endpoint w ON w.id = l.endpoint_id
WHERE l.org_id = %(org_id)s AND l.kind = 'attempt_finished'
ORDER BY l.seq

-- name: finished_attempts_by_endpoint
-- Every attempt's outcome at the given endpoints, a delivery's attempts in order.
SELECT l.endpoint_id, l.delivery_id, l.attempt, l.error_class, l.started_at, l.next_attempt_at
FROM delivery_log l
WHERE l.endpoint_id = ANY (%(endpoint_ids)s) AND l.kind = 'attempt_finished'
ORDER BY l.endpoint_id, l.delivery_id, l.attempt

-- name: set_max_in_flight
UPDATE webhook_endpoint SET max_in_flight = %(max_in_flight)s WHERE id = %(endpoint_id)s

-- name: deliveries_attempted
-- Deliveries with at least one outcome logged.
SELECT count(DISTINCT delivery_id) FROM delivery_log WHERE kind = 'attempt_finished'

-- name: outcomes_by_behaviour
-- Attempt outcomes per misbehaviour (the first segment of the endpoint's URL path), other URLs left out.
SELECT split_part(w.url, '/', 4), l.error_class, count(*)
FROM delivery_log l
JOIN webhook_endpoint w ON w.id = l.endpoint_id
WHERE l.kind = 'attempt_finished' AND w.url NOT LIKE %(healthy_prefix)s
GROUP BY 1, 2

-- name: events_found
-- Which of these events exist: an event exists if and only if its transaction committed.
SELECT id FROM outbox_event WHERE id = ANY (%(ids)s::uuid[])
