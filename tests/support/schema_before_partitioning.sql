-- schema.sql as released before partitioning (commit 4b2188d), kept to test the upgrade
-- (tests/integration/test_retention.py). Do not edit.
-- The outbox and webhook delivery schema: the single source of truth.
--
-- `deliverer migrate` applies this file as it is, in one transaction, under an
-- advisory lock; every statement is idempotent, so applying it again is a no-op.
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
-- Keys of the append-only tables lead with a time-ordered column (UUIDv7 event ids,
-- recorded_at on the log) so that retention can range-partition them by time and
-- drop whole partitions instead of deleting rows.

CREATE TABLE IF NOT EXISTS outbox_event (
    id          uuid        NOT NULL PRIMARY KEY,  -- UUIDv7: time-ordered, public form evt_<hex>
    org_id      text        NOT NULL,
    event_type  text        NOT NULL,
    body        text        NOT NULL,              -- the exact bytes every attempt signs and sends
    dedupe_key  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id()  -- commit-order cursor for pollers
);

-- Pollers read an org's events in commit order (see events_after in deliverer/queries.sql).
CREATE INDEX IF NOT EXISTS outbox_event_org_txid ON outbox_event (org_id, txid, id);

CREATE TABLE IF NOT EXISTS outbox_dedupe (
    org_id      text        NOT NULL,
    dedupe_key  text        NOT NULL,
    event_id    uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, dedupe_key)
);

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
-- signed with both meanwhile (see README, "Secret rotation").
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS previous_secret text;
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS previous_secret_expires_at timestamptz;
-- Why the endpoint was disabled (NULL while enabled, or when disabled by hand).
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS disabled_reason text;
-- Start of the current run of failed attempts; NULL after a success.
ALTER TABLE webhook_endpoint ADD COLUMN IF NOT EXISTS failing_since timestamptz;

-- Fan-out reads this on every publish.
CREATE INDEX IF NOT EXISTS webhook_endpoint_org ON webhook_endpoint (org_id) WHERE enabled AND deleted_at IS NULL;

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
--   attempt_started    a worker leased the delivery; next_attempt_at = lease end
--   attempt_finished   the attempt's outcome; next_attempt_at NULL means terminal
--   attempt_abandoned  the lease ran out with no outcome reported (worker died)
--   late_result        an outcome reported after its lease was taken over; informational only
CREATE TABLE IF NOT EXISTS delivery_log (
    seq              bigint      GENERATED ALWAYS AS IDENTITY,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    kind             text        NOT NULL CHECK (kind IN ('scheduled', 'replay_requested',
                         'attempt_started', 'attempt_finished', 'attempt_abandoned', 'late_result')),
    delivery_id      uuid        NOT NULL,
    event_id         uuid        NOT NULL,
    endpoint_id      text        NOT NULL,
    org_id           text        NOT NULL,
    series           integer     NOT NULL,
    attempt          integer     NOT NULL,
    outcome          text        CHECK (outcome IN ('succeeded', 'failed', 'unknown')),
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
);

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

CREATE INDEX IF NOT EXISTS delivery_queue_due ON delivery_queue (due_at);

-- The fold of delivery_log into current state, one row per delivery. Facts are
-- ordered by (series, attempt, phase) rather than by seq, because an abandoned
-- attempt and the next attempt's start are written by one statement.
-- delivery_queue holds exactly the non-terminal rows of this view.
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

-- Append-only tables refuse UPDATE, DELETE and TRUNCATE. Retention drops whole
-- partitions (DROP TABLE), which these triggers deliberately do not cover.
CREATE OR REPLACE FUNCTION outbox_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
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
