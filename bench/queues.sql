-- The SQL of the other queues the benchmark runs (bench/queues.py, bench/floor_worker.py).
-- Blocks start with "-- name: <name>".

-- name: floor_create
-- The floor's whole schema: one table of jobs. A job is free when its lease
-- (locked_until) has passed; done jobs are deleted. No log, no secondary index;
-- the storage options of the deliverer's delivery_queue (schema.sql), so that a
-- lease can be a HOT update on the same page.
CREATE TABLE bench_floor_job (
    id bigserial PRIMARY KEY,
    locked_until timestamptz NOT NULL DEFAULT '-infinity',
    job jsonb NOT NULL
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.05)

-- name: floor_enqueue
INSERT INTO bench_floor_job (job) SELECT * FROM unnest(%(jobs)s::jsonb[])

-- name: floor_claim
-- Lease up to %(limit)s free jobs, oldest first, in one statement.
UPDATE bench_floor_job
SET locked_until = now() + make_interval(secs => %(lease_seconds)s)
WHERE id IN (SELECT id FROM bench_floor_job
             WHERE locked_until < now()
             ORDER BY id
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED)
RETURNING id, job

-- name: floor_delete_done
DELETE FROM bench_floor_job WHERE id = ANY(%(ids)s::bigint[])

-- name: graphile_enqueue
-- graphile-worker's documented bulk API: one add_jobs call for every job.
SELECT count(*)
FROM graphile_worker.add_jobs(ARRAY(
    SELECT json_populate_record(NULL::graphile_worker.job_spec,
                                json_build_object('identifier', 'deliver', 'payload', job))
    FROM unnest(%(jobs)s::json[]) AS job))

-- name: staging_columns
-- The columns a copy of the table can be inserted back with (not the generated ones).
SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position)
FROM information_schema.columns
WHERE table_schema = %(schema)s AND table_name = %(table)s AND is_generated = 'NEVER'

-- name: jobs_left
-- Rows in a queue table are jobs not done yet: each of these queues deletes a job once it is done.
SELECT count(*) FROM {table}

-- name: queue_listeners
-- Worker backends that listen for new jobs.
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %(application_name)s

-- name: stage_jobs
-- Move every job out of the queue table into bench_staged_jobs, out of the workers' sight
-- (as bench/queries.sql's stage_due does with the deliverer's queue). {table}, {columns}: see queues.py.
CREATE TABLE bench_staged_jobs AS
WITH moved AS (DELETE FROM {table} RETURNING {columns}) SELECT * FROM moved

-- name: release_jobs
-- Put the staged jobs back at once; the caller then sends the queue's own notification.
INSERT INTO {table} ({columns}) OVERRIDING SYSTEM VALUE SELECT {columns} FROM bench_staged_jobs

-- name: vacuum_jobs
VACUUM ANALYZE {table}
