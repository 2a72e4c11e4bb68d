-- All SQL of the benchmark. Blocks start with "-- name: <name>".

-- name: create_staging
-- Deliveries published ahead of a drain wait here, out of the deliverers' sight.
CREATE TABLE IF NOT EXISTS bench_staged (LIKE delivery_queue)

-- name: clear_staging
TRUNCATE bench_staged

-- name: stage_due
-- Move every due delivery out of the queue into the staging table.
WITH moved AS (
    DELETE FROM delivery_queue WHERE due_at <= now() RETURNING *
)
INSERT INTO bench_staged SELECT * FROM moved

-- name: release_staged
-- Put the staged deliveries back in the queue at once (the caller then notifies
-- the deliverers in the same transaction): a queue of N events that appear together.
INSERT INTO delivery_queue SELECT * FROM bench_staged

-- name: notify_deliverers
SELECT pg_notify(%(channel)s, '')

-- name: vacuum_queue
VACUUM ANALYZE delivery_queue

-- name: vacuum_staging
VACUUM ANALYZE bench_staged

-- name: staged_unrecorded
-- Staged deliveries whose attempt is still leased, i.e. whose outcome is not recorded yet.
SELECT count(*)
FROM bench_staged s
JOIN delivery_queue q ON q.delivery_id = s.delivery_id
WHERE q.leased_by IS NOT NULL OR q.attempt = 0

-- name: claim_counts
-- Since the given log position: attempts made (each is one row, written when it
-- ends), successes, and facts that only appear when two workers take the same delivery.
SELECT count(*) FILTER (WHERE kind IN ('attempt_finished', 'attempt_abandoned')),
       count(*) FILTER (WHERE kind = 'attempt_finished' AND outcome = 'succeeded'),
       count(*) FILTER (WHERE kind IN ('attempt_abandoned', 'late_result'))
FROM delivery_log
WHERE seq > %(after_seq)s

-- name: last_log_seq
SELECT coalesce(max(seq), 0) FROM delivery_log

-- name: transactions
-- Committed transactions in this database so far (statements, for autocommit clients).
SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()

-- name: listening_deliverers
-- A worker enters deliverer_presence right after its LISTEN, on the same connection.
SELECT count(*) FROM deliverer_presence WHERE %(dbname)s = current_database()

-- name: deliverer_backends
SELECT pid FROM pg_stat_activity WHERE datname = %(dbname)s AND application_name LIKE 'deliverer%%'

-- name: deliverer_waits
-- What the deliverers' busy backends are doing right now: NULL wait means on CPU.
SELECT coalesce(wait_event_type, 'CPU'), count(*)
FROM pg_stat_activity
WHERE datname = %(dbname)s AND application_name LIKE 'deliverer %%' AND state = 'active'
GROUP BY 1

-- name: bulk_events
-- Many not-yet-due events in one statement, with time-ordered ids (like UUIDv7)
-- so the primary key is filled in order, as it is in production.
INSERT INTO outbox_event (id, org_id, event_type, body, created_at)
SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       'org_bench_' || (i %% %(orgs)s), 'job.completed', %(body)s, now()
FROM generate_series(1, %(count)s) AS i

-- name: bulk_deliveries
-- One queued delivery per bulk event, due a day from now (plus a millisecond
-- each, so the due index is not one long run of equal keys).
INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       (%(endpoint_ids)s::text[])[1 + i %% %(orgs)s], 'org_bench_' || (i %% %(orgs)s), 1, 0,
       now() + interval '1 day' + i * interval '1 millisecond'
FROM generate_series(1, %(count)s) AS i

-- name: bare_insert
-- The baseline of the publish benchmark: the outbox_event row publish writes, and nothing else.
INSERT INTO outbox_event (id, org_id, event_type, body) VALUES (%(id)s, %(org_id)s, %(event_type)s, %(body)s)

-- name: bare_insert_many
INSERT INTO outbox_event (id, org_id, event_type, body)
SELECT * FROM unnest(%(ids)s::uuid[], %(org_ids)s::text[], %(event_types)s::text[], %(bodies)s::text[])

-- name: deliverer_connections
-- Each deliverer connection and the last statement it ran, which tells its role
-- (claims, outcomes, backlog gauges, LISTEN): each role has a connection of its own.
SELECT pid, query FROM pg_stat_activity WHERE datname = %(dbname)s AND application_name LIKE 'deliverer %%'

-- name: set_endpoint_limits
UPDATE webhook_endpoint SET max_in_flight = %(max_in_flight)s, rate_limit = %(rate_limit)s WHERE id = %(id)s
