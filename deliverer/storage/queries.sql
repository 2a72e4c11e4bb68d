-- Schema maintenance: the migration lock, daily partitions and retention. Blocks start with "-- name: <name>".
-- Statements that schedule or expire take %(now)s: NULL means the database's
-- clock, a timestamp lets tests drive time instead of sleeping.
-- delivery_log.kind and outcome are enum types (see schema.sql). A quoted literal,
-- or a parameter used only there, is read as the enum; any other text (a column, a
-- CASE or VALUES of literals, a parameter also cast to text) needs a cast to be
-- compared with them, and gets one here where it is written too: a constant is then
-- converted once, not row by row.

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
