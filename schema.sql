-- The outbox and webhook delivery schema: the single source of truth.
--
-- `deliverer migrate` applies this file statement by statement, in one
-- transaction, under an advisory lock; every statement is idempotent, so applying
-- it again is a no-op. Its progress bar names each statement by its first line, a
-- DO block by the comment that opens its body.
--
-- Tables:
--   outbox_event      append-only; producers INSERT, nobody updates or deletes.
--   outbox_dedupe     (org, dedupe key) -> first event id; makes re-publishing a no-op.
--   webhook_endpoint  where an org wants its events, with the signing secret.
--   delivery_log      append-only history of every delivery: the source of truth.
--   delivery_queue    the hot work table: one row per open delivery. It is a
--                     projection of delivery_log (see the delivery_state view) and
--                     can be dropped and rebuilt from it by `deliverer rebuild-projections`.
--
-- The append-only tables are range-partitioned by time, one partition per UTC day:
-- outbox_event on its UUIDv7 id (a bound for time T is the uuid whose first 48 bits
-- are T's Unix milliseconds and the rest zero; uuids compare bytewise), delivery_log
-- on recorded_at. Retention drops whole partitions instead of deleting rows, so old
-- data leaves no dead tuples to vacuum. The daily partitions are created ahead by
-- deliverer/partitions.py (`deliverer migrate`, every running deliverer hourly, and
-- `deliverer retention`); this file creates only the parents and their DEFAULT
-- partitions.

-- What a delivery_log row records (see the table below) and how an attempt ended.
-- Enum types rather than CHECK constraints: a value is validated as it is read in (a
-- constant once, when the statement is planned), while CHECK constraints are set up
-- anew by every INSERT statement, which cost a single-row publish about a tenth of
-- its time. Text still converts on assignment, as it went into the text columns
-- before: deliverers released before the enum types keep recording outcomes during
-- a rolling upgrade, and drivers that type their parameters as text can write the
-- log. Neither CREATE TYPE nor CREATE CAST has IF NOT EXISTS.
DO $$
-- the enum types and their casts from text
BEGIN
    IF to_regtype('delivery_fact_kind') IS NULL THEN
        CREATE TYPE delivery_fact_kind AS ENUM ('scheduled', 'replay_requested', 'attempt_started',
                                                'attempt_finished', 'attempt_abandoned', 'late_result');
    END IF;
    IF to_regtype('delivery_outcome') IS NULL THEN
        CREATE TYPE delivery_outcome AS ENUM ('succeeded', 'failed', 'unknown');
    END IF;
    IF NOT EXISTS (SELECT FROM pg_cast WHERE castsource = 'text'::regtype
                                         AND casttarget = 'delivery_fact_kind'::regtype) THEN
        CREATE CAST (text AS delivery_fact_kind) WITH INOUT AS ASSIGNMENT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_cast WHERE castsource = 'text'::regtype
                                         AND casttarget = 'delivery_outcome'::regtype) THEN
        CREATE CAST (text AS delivery_outcome) WITH INOUT AS ASSIGNMENT;
    END IF;
END;
$$;

-- Upgrading from text columns with CHECK constraints: the view and the partial index
-- that compare kind with text go, and come back below. A log from before
-- partitioning is converted here too, before it is attached: a partition's columns
-- must have its parent's types. The type change rewrites the log (every partition)
-- once, holding every producer until the migration commits. Every value passed the
-- CHECKs, so every value converts.
DO $$
-- delivery_log kind, outcome to enums (a rewrite)
BEGIN
    IF (SELECT atttypid FROM pg_attribute
        WHERE attrelid = to_regclass('delivery_log') AND attname = 'kind') = 'text'::regtype THEN
        DROP VIEW IF EXISTS delivery_state;
        DROP INDEX IF EXISTS delivery_log_event;
        ALTER TABLE delivery_log
            DROP CONSTRAINT IF EXISTS delivery_log_kind_check,
            DROP CONSTRAINT IF EXISTS delivery_log_outcome_check;
        ALTER TABLE delivery_log
            ALTER COLUMN kind TYPE delivery_fact_kind USING kind::delivery_fact_kind,
            ALTER COLUMN outcome TYPE delivery_outcome USING outcome::delivery_outcome;
        CREATE INDEX delivery_log_event ON delivery_log (event_id) WHERE kind = 'scheduled';
    END IF;
END;
$$;

-- Upgrading from before partitioning, part one: the plain tables step aside under
-- a *_legacy name (with their indexes and identity sequence, whose names the new
-- tables take) and are attached below as the first partitions. Their row triggers
-- go: attaching gives them the parent's.
DO $$
-- unpartitioned tables renamed to *_legacy
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('outbox_event')) = 'r' THEN
        ALTER TABLE outbox_event RENAME TO outbox_event_legacy;
        ALTER INDEX IF EXISTS outbox_event_pkey RENAME TO outbox_event_legacy_pkey;
        ALTER INDEX IF EXISTS outbox_event_org_txid RENAME TO outbox_event_legacy_org_txid;
        DROP TRIGGER IF EXISTS outbox_event_append_only ON outbox_event_legacy;
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('delivery_log')) = 'r' THEN
        ALTER TABLE delivery_log RENAME TO delivery_log_legacy;
        ALTER INDEX IF EXISTS delivery_log_pkey RENAME TO delivery_log_legacy_pkey;
        ALTER INDEX IF EXISTS delivery_log_delivery RENAME TO delivery_log_legacy_delivery;
        ALTER INDEX IF EXISTS delivery_log_endpoint RENAME TO delivery_log_legacy_endpoint;
        ALTER INDEX IF EXISTS delivery_log_event RENAME TO delivery_log_legacy_event;
        EXECUTE format('ALTER SEQUENCE %s RENAME TO delivery_log_legacy_seq_seq',
                       pg_get_serial_sequence('delivery_log_legacy', 'seq'));
        DROP TRIGGER IF EXISTS delivery_log_append_only ON delivery_log_legacy;
    END IF;
END;
$$;

CREATE TABLE IF NOT EXISTS outbox_event (
    id          uuid        NOT NULL PRIMARY KEY,  -- UUIDv7: time-ordered, public form evt_<hex>
    org_id      text        NOT NULL,
    event_type  text        NOT NULL,
    body        text        NOT NULL,              -- the exact bytes every attempt signs and sends
    dedupe_key  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id()  -- commit-order cursor for pollers
) PARTITION BY RANGE (id);

-- The publisher's W3C trace context, NULL outside a trace (outbox/tracecontext.py): every
-- attempt continues that trace and sends the receiver a traceparent in it.
ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS traceparent text;
ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS tracestate text;
-- The key given at publish for endpoints that deliver in order (ordering 'fifo'): events
-- with one key reach such an endpoint one at a time, in publish order; NULL is a key too.
ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS ordering_key text;

-- Pollers read an org's events in commit order (see events_after in deliverer/queries.sql).
CREATE INDEX IF NOT EXISTS outbox_event_org_txid ON outbox_event (org_id, txid, id);

CREATE TABLE IF NOT EXISTS outbox_dedupe (
    org_id      text        NOT NULL,
    dedupe_key  text        NOT NULL,
    event_id    uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, dedupe_key)
);

-- Retention forgets dedupe keys older than its cutoff, oldest first, in batches.
CREATE INDEX IF NOT EXISTS outbox_dedupe_created_at ON outbox_dedupe (created_at);

CREATE TABLE IF NOT EXISTS webhook_endpoint (
    id           text        NOT NULL PRIMARY KEY,  -- ep_<random>
    org_id       text        NOT NULL,
    url          text        NOT NULL,
    secret       text        NOT NULL,
    event_types  text[],                            -- NULL: every event type
    description  text        NOT NULL DEFAULT '',
    enabled      boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);

-- Columns added after the first release: ADD COLUMN IF NOT EXISTS migrates databases
-- created before them.
-- Secret rotation keeps the previous secret valid for a grace period; requests are
-- signed with both meanwhile (see docs/security.md, "Secret rotation").
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS previous_secret text;
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS previous_secret_expires_at timestamptz;
-- Why the endpoint was disabled (NULL while enabled, or when disabled by hand).
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS disabled_reason text;
-- Start of the current run of failed attempts; NULL after a success.
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS failing_since timestamptz;
-- The endpoint's limits across every deliverer process: requests open at once
-- (NULL: DELIVERER_ENDPOINT_MAX_IN_FLIGHT) and deliveries per second (NULL: none).
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS max_in_flight integer
    CONSTRAINT webhook_endpoint_max_in_flight_positive CHECK (max_in_flight >= 1);
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS rate_limit double precision
    CONSTRAINT webhook_endpoint_rate_limit_positive CHECK (rate_limit > 0);
-- What the endpoint adds to every request (see deliverer.registry.request_options):
-- custom headers as {name: sealed value}, names in the clear for listings, and its
-- authentication, the type in the clear and the credentials sealed (JSON).
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS headers jsonb;
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS auth_type text
    CONSTRAINT webhook_endpoint_auth_type_known CHECK (auth_type IN ('basic', 'bearer', 'mtls'));
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS auth text;
-- 'fifo': deliveries published while it is set are sent one at a time per ordering key,
-- in publish order (see claim_deliveries); 'none': as they come, in parallel.
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS ordering text NOT NULL DEFAULT 'none'
    CONSTRAINT webhook_endpoint_ordering_known CHECK (ordering IN ('none', 'fifo'));

-- Fan-out reads this on every publish.
CREATE INDEX IF NOT EXISTS webhook_endpoint_org ON webhook_endpoint (org_id) WHERE enabled AND deleted_at IS NULL;
-- The endpoints in a run of failures: every worker reads them to notice the run's end.
CREATE INDEX IF NOT EXISTS webhook_endpoint_failing ON webhook_endpoint (id) WHERE failing_since IS NOT NULL;

-- API keys: only a SHA-256 of the key is stored. Keys carry 32 random bytes, so a
-- fast hash is enough; the prefix helps operators recognise a key in listings.
CREATE TABLE IF NOT EXISTS api_key (
    id          text        NOT NULL PRIMARY KEY,  -- key_<random>
    org_id      text        NOT NULL,
    key_hash    bytea       NOT NULL UNIQUE,
    prefix      text        NOT NULL,             -- e.g. sk_live_AbC1
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- One row per fact about a delivery. `series` counts attempt series (1, then one
-- more per manual replay); `attempt` is the attempt number inside the series and
-- doubles as the fencing token for leases.
--   scheduled          fan-out created the delivery; next_attempt_at = first due time
--   replay_requested   a new attempt series starts; actor says who asked
--   attempt_started    (earlier versions only) a worker leased the delivery; next_attempt_at = lease end
--   attempt_finished   the attempt's outcome; next_attempt_at NULL means terminal
--   attempt_abandoned  the lease ran out with no outcome reported (worker died), or was handed back
--   late_result        an outcome reported after its lease was taken over; informational only
-- An attempt is one row, written when it ends: its worker, start (started_at),
-- duration and result. The attempt in progress is the lease on its delivery_queue
-- row (leased_by, leased_at, due_at = lease end): coordination between workers, not
-- yet a fact. A lease that runs out becomes one when the next claim records it as
-- abandoned, with the start and worker its lease kept.
CREATE TABLE IF NOT EXISTS delivery_log (
    seq              bigint      GENERATED ALWAYS AS IDENTITY,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    kind             delivery_fact_kind NOT NULL,
    delivery_id      uuid        NOT NULL,
    event_id         uuid        NOT NULL,
    endpoint_id      text        NOT NULL,
    org_id           text        NOT NULL,
    series           integer     NOT NULL,
    attempt          integer     NOT NULL,
    outcome          delivery_outcome,
    next_attempt_at  timestamptz,
    worker_id        text,
    started_at       timestamptz,
    duration_ms      double precision,
    http_status      integer,
    error_class      text,
    error_message    text,
    response_excerpt text,
    actor            text,
    PRIMARY KEY (recorded_at, seq)
) PARTITION BY RANGE (recorded_at);

CREATE INDEX IF NOT EXISTS delivery_log_delivery ON delivery_log (delivery_id, series, attempt);
-- An endpoint's attempts, newest first, paged by seq.
CREATE INDEX IF NOT EXISTS delivery_log_endpoint ON delivery_log (endpoint_id, seq);
-- An event's deliveries: only the one 'scheduled' row of each is indexed.
CREATE INDEX IF NOT EXISTS delivery_log_event ON delivery_log (event_id) WHERE kind = 'scheduled';

CREATE TABLE IF NOT EXISTS delivery_queue (
    delivery_id  uuid        NOT NULL PRIMARY KEY,
    event_id     uuid        NOT NULL,
    endpoint_id  text        NOT NULL,
    org_id       text        NOT NULL,
    series       integer     NOT NULL,
    attempt      integer     NOT NULL,  -- attempts started in this series; the lease's fencing token
    due_at       timestamptz NOT NULL,  -- next attempt, or lease end while leased
    leased_by    text                   -- worker holding the lease; NULL when waiting
) WITH (
    -- Rows are inserted, updated a few times and deleted within seconds: keep the
    -- table and its index small by vacuuming early and leaving room on each page.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.05
);

-- An ordered delivery's place, NULL for the others: its key (the event's ordering_key, ''
-- for none) and the transaction that queued it (the publish, or the replay), then its
-- event id. Only the first of a key's rows may be claimed, and only once every
-- transaction with a lower id has ended (see claim_deliveries).
ALTER TABLE delivery_queue ADD COLUMN IF NOT EXISTS ordering_key text;
ALTER TABLE delivery_queue ADD COLUMN IF NOT EXISTS txid xid8;
-- When the lease was taken: the start of the attempt in progress, logged with its end.
ALTER TABLE delivery_queue ADD COLUMN IF NOT EXISTS leased_at timestamptz;

CREATE INDEX IF NOT EXISTS delivery_queue_due ON delivery_queue (due_at);
-- A key's rows in their order: is a delivery the first of its key?
CREATE INDEX IF NOT EXISTS delivery_queue_ordered ON delivery_queue (endpoint_id, ordering_key, txid, event_id)
    WHERE txid IS NOT NULL;
-- An endpoint's leases: the requests open to it, counted by every claim (endpoint_leases below).
CREATE INDEX IF NOT EXISTS delivery_queue_leased ON delivery_queue (endpoint_id) WHERE leased_by IS NOT NULL;

-- An endpoint's leases running at `since`, by worker, less the deliveries in
-- `finished`: what claim_deliveries counts as the requests open there. A function so
-- that its scan can be told to be a plain index scan. A lease that ended is a deleted
-- row whose index entry stays until vacuum; a plain index scan marks such entries
-- dead as it passes them (and skips them from then on), a bitmap scan does not. The
-- planner chose a bitmap scan, which in a drain read each endpoint's thousands of
-- ended leases again at every claim: the claim's largest cost, and one that grows
-- with the time since the last vacuum. The SET applies while the function runs only.
-- The lease end is compared in a form no index serves (a difference, not the column):
-- with statistics taken while the queue was empty, the planner otherwise walked
-- delivery_queue_due through every future row, a backlog of retries included.
CREATE OR REPLACE FUNCTION endpoint_leases(endpoint text, since timestamptz, finished uuid[])
RETURNS TABLE (worker text, leases bigint)
LANGUAGE plpgsql STABLE ROWS 2 SET enable_bitmapscan = off AS $$
BEGIN
    RETURN QUERY SELECT q.leased_by, count(*) FROM delivery_queue q
                 WHERE q.endpoint_id = endpoint AND q.leased_by IS NOT NULL
                   AND q.due_at - since > interval '0'
                   AND q.delivery_id <> ALL (finished)
                 GROUP BY q.leased_by;
END;
$$;

-- Whether an ordered delivery has another of its key before it in the queue (see
-- claim_deliveries). A PL/pgSQL function, declared cheap, rather than a subquery in
-- the claim: the planner counts a subquery's cost for every row the claim might scan
-- although only ordered rows run it, and that made it plan every claim afresh
-- instead of reusing the prepared plan (25-40 us of PostgreSQL CPU a delivery).
CREATE OR REPLACE FUNCTION delivery_queue_behind(endpoint text, key text, queued xid8, event uuid) RETURNS boolean
LANGUAGE plpgsql STABLE COST 1 AS $$
BEGIN
    RETURN EXISTS (SELECT FROM delivery_queue b
                   WHERE b.endpoint_id = endpoint AND b.ordering_key = key AND b.txid IS NOT NULL
                     AND (b.txid, b.event_id) < (queued, event));
END;
$$;

-- Each endpoint's pacing, shared by every deliverer process; claims read and
-- write it under its row lock (see claim_deliveries). The requests open to it are
-- not kept here: they are its leases that have not run out (delivery_queue_leased).
--   allowance     how many may be open, adapted like TCP congestion control: +1
--                 per success up to the endpoint's max_in_flight, halved on a
--                 timeout, a connection error, 429 or 503
--   tokens        the rate limit's bucket, refilled at rate_limit per second
--   paused_until  a 429/503 with Retry-After pauses the whole endpoint
--   active_at     the last claim that sent a request; an endpoint idle for a
--                 minute (and nothing open) starts again from the initial allowance
--   held          worker id -> the requests it may have open here, as of its last claim
--   claims        claims that wrote this row: one that read an older count re-reads it
--   wanted_by/at  the last worker held back by what others hold here: it counts
--                 among those sharing the allowance for a second
-- Soft state, hence UNLOGGED (no WAL for its updates, the hottest rows there are):
-- after a crash or on a promoted standby the table is empty, and each row is
-- made again on the endpoint's next claim (see ensure_endpoint_flow).
-- The deliverers running now, each seen within the last few seconds: a producer's
-- notification (its payload, the transaction id) wakes the one whose turn it is,
-- not every worker. Soft state like endpoint_flow, hence UNLOGGED.
CREATE UNLOGGED TABLE IF NOT EXISTS deliverer_presence (
    worker_id text        NOT NULL PRIMARY KEY,
    seen_at   timestamptz NOT NULL
);

CREATE UNLOGGED TABLE IF NOT EXISTS endpoint_flow (
    endpoint_id  text             NOT NULL PRIMARY KEY,
    allowance    integer          NOT NULL,
    tokens       double precision NOT NULL DEFAULT 0,
    tokens_at    timestamptz      NOT NULL DEFAULT now(),
    paused_until timestamptz,
    active_at    timestamptz      NOT NULL DEFAULT now(),
    held         jsonb            NOT NULL DEFAULT '{}',
    claims       bigint           NOT NULL DEFAULT 0,
    wanted_by    text,
    wanted_at    timestamptz
) WITH (fillfactor = 50);

-- The fold of delivery_log into current state, one row per delivery. Facts are
-- ordered by (series, attempt, phase) rather than by seq, because an abandoned
-- attempt and the next attempt's start were written by one statement (earlier versions).
-- delivery_queue holds exactly the non-terminal rows of this view, as they were
-- before any lease still running was taken (see delivery_log: a lease is not a fact).
CREATE OR REPLACE VIEW delivery_state AS
SELECT DISTINCT ON (delivery_id)
    delivery_id,
    event_id,
    endpoint_id,
    org_id,
    series,
    attempt,
    CASE
        WHEN kind IN ('scheduled', 'replay_requested') THEN 'pending'
        WHEN kind = 'attempt_started' THEN 'in_flight'
        WHEN outcome = 'succeeded' THEN 'delivered'
        WHEN next_attempt_at IS NULL THEN 'failed'
        ELSE 'retrying'
    END AS state,
    next_attempt_at AS due_at,
    CASE WHEN kind = 'attempt_started' THEN worker_id END AS leased_by,
    recorded_at AS updated_at
FROM delivery_log
WHERE kind <> 'late_result'
ORDER BY delivery_id, series DESC, attempt DESC,
    CASE kind WHEN 'attempt_started' THEN 1
              WHEN 'attempt_finished' THEN 2
              WHEN 'attempt_abandoned' THEN 2
              ELSE 0 END DESC;

-- What a delivery is doing now, for the API and the dashboard: the fold of the log,
-- and the lease of the attempt in progress, which the log learns of when it ends.
CREATE OR REPLACE VIEW delivery_current AS
SELECT s.delivery_id, s.event_id, s.endpoint_id, s.org_id, s.series,
       coalesce(q.attempt, s.attempt) AS attempt,
       CASE WHEN q.delivery_id IS NULL THEN s.state ELSE 'in_flight' END AS state,
       coalesce(q.due_at, s.due_at) AS due_at,
       coalesce(q.leased_by, s.leased_by) AS leased_by,
       coalesce(q.leased_at, s.updated_at) AS updated_at
FROM delivery_state s
LEFT JOIN delivery_queue q ON q.delivery_id = s.delivery_id AND q.series = s.series AND q.leased_by IS NOT NULL;

-- Append-only tables refuse UPDATE, DELETE and TRUNCATE. Retention drops whole
-- partitions (DROP TABLE), which these triggers deliberately do not cover. Row
-- triggers are cloned onto every partition; TRUNCATE triggers are not, so
-- deliverer/partitions.py gives each partition its own. The message names the
-- partitioned table, whichever partition the statement hit.
CREATE OR REPLACE FUNCTION outbox_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed',
                    coalesce(pg_partition_root(TG_RELID), TG_RELID)::regclass, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Record a new fact instead of changing an old one.';
END;
$$;

CREATE OR REPLACE TRIGGER outbox_event_append_only
    BEFORE UPDATE OR DELETE ON outbox_event
    FOR EACH ROW EXECUTE FUNCTION outbox_refuse_change();
CREATE OR REPLACE TRIGGER outbox_event_no_truncate
    BEFORE TRUNCATE ON outbox_event
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_refuse_change();
CREATE OR REPLACE TRIGGER delivery_log_append_only
    BEFORE UPDATE OR DELETE ON delivery_log
    FOR EACH ROW EXECUTE FUNCTION outbox_refuse_change();
CREATE OR REPLACE TRIGGER delivery_log_no_truncate
    BEFORE TRUNCATE ON delivery_log
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_refuse_change();

-- Upgrading from before partitioning, part two: each renamed table becomes the
-- partition of everything up to the end of the current day (or of its newest row's
-- day, should a clock have run ahead), and daily partitions follow from there.
-- Attaching copies nothing: it reads the table once to check the bound, in the
-- migration's transaction, while producers wait. The log's identity goes on from
-- the old sequence, so seq keeps ordering the log across the two.
DO $$
-- the *_legacy tables attached as partitions
DECLARE
    newest timestamptz;
BEGIN
    IF NOT (SELECT relispartition FROM pg_class WHERE oid = to_regclass('outbox_event_legacy')) THEN
        -- A partition has every column of its parent: the trace context's and ordering key's too (NULL).
        ALTER TABLE outbox_event_legacy ADD COLUMN IF NOT EXISTS traceparent text,
                                        ADD COLUMN IF NOT EXISTS tracestate text,
                                        ADD COLUMN IF NOT EXISTS ordering_key text;
        SELECT to_timestamp(('x' || left(replace(id::text, '-', ''), 12))::bit(48)::bigint / 1000.0)
        INTO newest FROM outbox_event_legacy ORDER BY id DESC LIMIT 1;
        newest := date_trunc('day', greatest(now(), newest), 'UTC') + interval '1 day';
        EXECUTE format('ALTER TABLE outbox_event ATTACH PARTITION outbox_event_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                       lpad(to_hex((extract(epoch FROM newest) * 1000)::bigint), 12, '0') || repeat('0', 20));
    END IF;
    IF NOT (SELECT relispartition FROM pg_class WHERE oid = to_regclass('delivery_log_legacy')) THEN
        PERFORM setval(pg_get_serial_sequence('delivery_log', 'seq'),
                       coalesce(pg_sequence_last_value('delivery_log_legacy_seq_seq'), 0) + 1, false);
        ALTER TABLE delivery_log_legacy ALTER COLUMN seq DROP IDENTITY;
        SELECT max(recorded_at) INTO newest FROM delivery_log_legacy;
        newest := date_trunc('day', greatest(now(), newest), 'UTC') + interval '1 day';
        EXECUTE format('ALTER TABLE delivery_log ATTACH PARTITION delivery_log_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                       newest);
    END IF;
END;
$$;

-- The safety net: a row no daily partition covers lands here rather than failing
-- the producer's transaction when partition maintenance has lapsed. Retention never
-- drops these, and no daily partition is created over rows they hold (maintenance
-- reports such ranges instead; see docs/operations.md, "Retention").
CREATE TABLE IF NOT EXISTS outbox_event_default PARTITION OF outbox_event DEFAULT;
CREATE TABLE IF NOT EXISTS delivery_log_default PARTITION OF delivery_log DEFAULT;
