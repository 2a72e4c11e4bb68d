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
-- recorded as abandoned with an unknown outcome. If it was the last attempt allowed,
-- the row is leased to this worker as it is (expired_lease_of says whose it was),
-- not to be sent: the worker records it as abandoned and failed for good, in the
-- transaction that announces delivery.exhausted (deliverer.delivery.operational).
-- Each endpoint's limits hold across every worker. Each claim gives this worker a
-- limit at each endpoint it looks at (lim: requests it may have open there at
-- once), its fair part of the allowance (the allowance over the workers holding
-- leases there and the last one that wanted more) within the room the others
-- leave, and leases up to %(ahead)s times that limit: the worker sends at most
-- lim at once and starts the rest as its requests end (deliverer.delivery.gates).
-- The requests the others have open are counted from their leases that have not
-- run out, each worker's up to what it announced after its last claim there
-- (endpoint_flow.held, never less than it may still have open); this worker's own
-- leases count less the ones it has an answer for already (%(finished)s: their
-- outcomes are on their way to the log). So slots are refilled the moment requests
-- end, not when outcomes are written, a worker that has it all hands slots over as
-- others want some, and a crashed worker's slots come back when its leases run out,
-- with no count to drift. The endpoint's endpoint_flow row is locked for the claim
-- (a worker that finds it locked, or changed since this statement's snapshot,
-- skips the endpoint: another is claiming for it this instant); the leases taken
-- also spend the rate limit's tokens.
-- skip_endpoints are endpoints this worker knows to be full, paused or out of
-- tokens: their backlog does not fill the scan window.
-- An ordered delivery (txid set: its endpoint's ordering is 'fifo') is taken only
-- when it is the first of its key in the queue, so a key has one request open at a
-- time and the next waits until the one before is delivered or has failed for good
-- (leaving the queue); a lease that ran out is the first still, and is taken again.
-- Its place is the transaction that queued it: first only once every transaction
-- with a lower id has ended, since one of those may still commit a delivery that
-- comes before it. The claims of an endpoint take turns (its endpoint_flow row,
-- below), so each sees the leases of the one before.
WITH walk AS MATERIALIZED (
    SELECT q.delivery_id, q.endpoint_id, q.due_at, q.ordering_key,
           q.txid IS NOT NULL AND delivery_queue_behind(q.endpoint_id, q.ordering_key, q.txid, q.event_id) AS behind,
           q.txid IS NOT NULL AND q.txid >= pg_snapshot_xmin(pg_current_snapshot()) AS older_open
    FROM delivery_queue q
    WHERE q.due_at <= coalesce(%(now)s::timestamptz, now())
      AND q.endpoint_id <> ALL (%(skip_endpoints)b::text[])
    ORDER BY q.due_at
    LIMIT %(scan)s
),
oldest AS MATERIALIZED (
    SELECT delivery_id, endpoint_id, due_at FROM walk WHERE NOT behind AND NOT older_open
),
-- Every endpoint in the window takes its turn, one with only deliveries to put aside too.
waiting AS MATERIALIZED (
    SELECT endpoint_id, count(*) FILTER (WHERE NOT behind AND NOT older_open) AS due FROM walk GROUP BY endpoint_id
),
-- The requests open are counted in this statement's snapshot, which may be older than
-- the lock: a claim that committed meanwhile has leases the count cannot see. Every
-- claim that leases counts itself in the row (claims), so a row whose locked version
-- counts more claims than the snapshot's is passed over like a locked one, to be
-- claimed for next time. (Outcomes written meanwhile only end leases: they are safe
-- to miss.)
flow AS MATERIALIZED (
    SELECT f.*, d.due,
           f.claims = (SELECT g.claims FROM endpoint_flow g WHERE g.endpoint_id = f.endpoint_id) AS current
    FROM endpoint_flow f
    JOIN waiting d USING (endpoint_id)
    FOR UPDATE OF f SKIP LOCKED
),
-- The allowance starts again from the initial one when the endpoint has been idle
-- (nothing open, no request sent for IDLE_AFTER seconds);
-- the bucket holds at most half a second of its rate (at least one token).
pace AS MATERIALIZED (
    SELECT f.endpoint_id, a.allowance, b.rate, b.tokens, f.paused_until, n.mine, n.others_held, c.paused, c.lim,
           -- Deliveries to lease: up to `ahead` times its limit less what it holds already (the
           -- worker sends at most `lim` at once and keeps the rest ready), within the tokens.
           -- Not ahead of a rate limit: tokens are spent when leased, so the sends must follow at once.
           greatest(0, least(CASE WHEN b.rate IS NULL THEN %(ahead)s ELSE 1 END * c.lim - n.mine,
                             floor(coalesce(b.tokens, 2147483647))))::int AS free,
           -- What the others will count of it: never less than it may still have open.
           greatest(c.lim, least(n.mine, coalesce((f.held ->> %(worker_id)s)::bigint, 0)))::int AS held_now,
           -- Held back by what others hold, not by its own part, with more due than it has:
           -- others should hand slots over.
           NOT c.paused AND a.allowance - n.others < least(c.part, n.mine + f.due) AS wants_more
    FROM flow f
    JOIN webhook_endpoint w ON w.id = f.endpoint_id AND f.current
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(h.open), 0) AS open,
               coalesce(sum(h.open) FILTER (WHERE h.worker <> %(worker_id)s), 0) AS others,
               coalesce(sum(h.open) FILTER (WHERE h.worker = %(worker_id)s), 0) AS mine,
               count(*) FILTER (WHERE h.worker <> %(worker_id)s AND h.worker IS DISTINCT FROM f.wanted_by) AS holders,
               coalesce(jsonb_object_agg(h.worker, h.open) FILTER (WHERE h.worker <> %(worker_id)s), '{}')
                   AS others_held
        FROM (SELECT l.worker,
                     -- Another worker's leases count up to what it held after its last claim:
                     -- the rest wait their turn there, or are requests that ended, outcomes unwritten.
                     CASE WHEN l.worker = %(worker_id)s THEN l.leases
                          ELSE least(l.leases, coalesce((f.held ->> l.worker)::bigint, l.leases)) END AS open
              FROM endpoint_leases(f.endpoint_id, coalesce(%(now)s::timestamptz, now()),
                                 %(finished)s::uuid[]) l) h
    ) n
    CROSS JOIN LATERAL (
        SELECT 1 + n.holders + CASE WHEN f.wanted_by <> %(worker_id)s
                                         AND f.wanted_at > coalesce(%(now)s::timestamptz, now()) - interval '1 second'
                                    THEN 1 ELSE 0 END AS sharers
    ) s
    CROSS JOIN LATERAL (
        SELECT least(coalesce(w.max_in_flight, %(default_max_in_flight)s),
                     CASE WHEN n.open = 0
                               AND f.active_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(idle_after)s)
                          THEN %(initial_allowance)s ELSE f.allowance END) AS allowance
    ) a
    CROSS JOIN LATERAL (
        -- least and greatest pass over NULLs: no rate limit must stay no tokens, not one.
        SELECT r.rate,
               CASE WHEN r.rate IS NOT NULL THEN
                   least(greatest(1, r.rate / 2),
                         f.tokens + r.rate * greatest(0, extract(epoch FROM coalesce(%(now)s::timestamptz, now())
                                                                            - f.tokens_at)))
               END AS tokens
        FROM (SELECT coalesce(w.rate_limit, %(default_rate_limit)s) AS rate) r
    ) b
    -- Its limit: requests it may have open at once, its fair part of the room the others leave.
    CROSS JOIN LATERAL (
        SELECT coalesce(f.paused_until > coalesce(%(now)s::timestamptz, now()), false) AS paused,
               ceil(a.allowance::numeric / s.sharers)::int AS part
    ) c0
    CROSS JOIN LATERAL (
        SELECT c0.paused, c0.part,
               CASE WHEN c0.paused THEN 0 ELSE greatest(0, least(a.allowance - n.others, c0.part)) END::int AS lim
    ) c
),
candidates AS MATERIALIZED (
    SELECT o.delivery_id
    FROM (SELECT delivery_id, endpoint_id, due_at,
                 row_number() OVER (PARTITION BY endpoint_id ORDER BY due_at) AS nth
          FROM oldest) AS o
    JOIN pace p ON p.endpoint_id = o.endpoint_id
    WHERE o.nth <= p.free
    ORDER BY o.due_at
),
-- Locks are taken one candidate at a time, oldest first, by primary key, until the
-- limit is reached: as a join the planner may hash every due row of a large backlog,
-- and a sort above the lock would lock candidates that are not then leased.
due AS (
    SELECT q.delivery_id, q.event_id, q.endpoint_id, q.org_id, q.series, q.attempt, q.leased_by, q.leased_at,
           q.leased_by IS NOT NULL AND q.attempt >= %(max_attempts)s AS exhausted
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT * FROM delivery_queue q
        WHERE q.delivery_id = c.delivery_id AND q.due_at <= coalesce(%(now)s::timestamptz, now())
        FOR UPDATE SKIP LOCKED
    ) q
    LIMIT %(limit)s
),
-- The attempt whose lease ran out is logged now, with the worker and start its lease kept.
abandoned AS (
    INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                              outcome, next_attempt_at, worker_id, started_at, error_class, error_message)
    SELECT 'attempt_abandoned', delivery_id, event_id, endpoint_id, org_id, series, attempt,
           'unknown', coalesce(%(now)s::timestamptz, now()),
           leased_by, leased_at, 'lease_expired',
           'worker ' || leased_by || ' did not report an outcome before its lease expired'
    FROM due WHERE leased_by IS NOT NULL AND NOT exhausted
),
-- Ordered deliveries with one before them in the queue are put aside for park_seconds,
-- out of every claim's scan: the end of the one before brings the next back at once
-- (record_results), and a park that ends finds the next still first or puts it aside
-- again. A key found with one waiting in the window has all its waiting ones put aside
-- at once, not a window at a time: until they are, its next in line (back at the end
-- of the queue's order) would wait behind them. Only at endpoints claimed for here
-- (their turn: nothing else parks there), and only rows no one has locked.
parked AS (
    UPDATE delivery_queue q
    SET due_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(park_seconds)s)
    FROM (SELECT DISTINCT w.endpoint_id, w.ordering_key FROM walk w JOIN pace p USING (endpoint_id)
          WHERE w.behind) k
    CROSS JOIN LATERAL (
        SELECT h.txid, h.event_id FROM delivery_queue h
        WHERE h.endpoint_id = k.endpoint_id AND h.ordering_key = k.ordering_key AND h.txid IS NOT NULL
        ORDER BY h.txid, h.event_id
        LIMIT 1
    ) first
    CROSS JOIN LATERAL (
        SELECT x.delivery_id FROM delivery_queue x
        WHERE x.endpoint_id = k.endpoint_id AND x.ordering_key = k.ordering_key AND x.txid IS NOT NULL
          AND (x.txid, x.event_id) > (first.txid, first.event_id)
          AND x.leased_by IS NULL AND x.due_at <= coalesce(%(now)s::timestamptz, now())
        FOR UPDATE SKIP LOCKED
    ) x
    WHERE q.delivery_id = x.delivery_id
    RETURNING 1
),
leased AS (
    UPDATE delivery_queue q
    SET attempt = q.attempt + CASE WHEN d.exhausted THEN 0 ELSE 1 END,
        leased_by = %(worker_id)s,
        leased_at = coalesce(%(now)s::timestamptz, now()),
        due_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s)
    FROM due d
    WHERE q.delivery_id = d.delivery_id
    RETURNING q.delivery_id, q.event_id, q.endpoint_id, q.org_id, q.series, q.attempt, q.due_at,
              q.txid IS NOT NULL AS ordered, CASE WHEN d.exhausted THEN d.leased_by END AS expired_lease_of,
              CASE WHEN d.exhausted THEN d.leased_at END AS expired_lease_at
),
-- Every request sent spends a token (an exhausted delivery sends none).
taken AS (
    SELECT endpoint_id, count(*) FILTER (WHERE NOT exhausted) AS sent
    FROM due GROUP BY endpoint_id
),
-- Written only where something changed: deliveries were leased, this worker's
-- limit changed, or it wants more of an endpoint than the others leave it.
paced AS (
    UPDATE endpoint_flow f
    SET allowance = p.allowance,
        tokens = coalesce(p.tokens - coalesce(t.sent, 0), 0),
        tokens_at = coalesce(%(now)s::timestamptz, now()),
        active_at = coalesce(%(now)s::timestamptz, now()),
        held = p.others_held || jsonb_build_object(%(worker_id)s, p.held_now),
        claims = f.claims + 1,
        wanted_by = CASE WHEN p.wants_more THEN %(worker_id)s ELSE f.wanted_by END,
        wanted_at = CASE WHEN p.wants_more THEN coalesce(%(now)s::timestamptz, now()) ELSE f.wanted_at END
    FROM pace p LEFT JOIN taken t ON t.endpoint_id = p.endpoint_id
    WHERE f.endpoint_id = p.endpoint_id
      AND (t.endpoint_id IS NOT NULL OR p.wants_more
           OR p.held_now IS DISTINCT FROM (f.held ->> %(worker_id)s)::int)
),
-- What this claim learnt of the endpoints it looked at, for the worker to skip them
-- until it is worth asking again: full (no room left for it: until a request of
-- its own there ends, or others hand slots over), blocked for some seconds
-- (paused, or out of tokens), or unknown here (no endpoint_flow row yet: the worker
-- makes one and claims again).
learnt AS (
    SELECT p.endpoint_id,
           CASE WHEN p.paused THEN extract(epoch FROM p.paused_until - coalesce(%(now)s::timestamptz, now()))::float8
                WHEN p.rate IS NOT NULL AND p.tokens - coalesce(t.sent, 0) < 1
                    THEN ((1 - (p.tokens - coalesce(t.sent, 0))) / p.rate)::float8
           END AS blocked_for,
           p.free - coalesce(t.sent, 0) <= 0 AS no_room
    FROM pace p
    LEFT JOIN taken t ON t.endpoint_id = p.endpoint_id
)
SELECT l.delivery_id, l.event_id, l.endpoint_id, l.org_id, l.series, l.attempt,
       e.event_type, e.body, e.created_at, w.url, w.secret,
       CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
       w.enabled AND w.deleted_at IS NULL AS endpoint_enabled, l.due_at AS lease_until,
       e.traceparent, e.tracestate, w.headers, w.auth, l.ordered, l.expired_lease_of, l.expired_lease_at,
       NULL::float8 AS next_due_in, NULL::text[] AS full_endpoints, NULL::text[] AS blocked_endpoints,
       NULL::float8[] AS blocked_for, NULL::text[] AS unknown_endpoints,
       NULL::text[] AS limited_endpoints, NULL::int[] AS limits, NULL::bigint AS parked
FROM leased l
JOIN outbox_event e ON e.id = l.event_id
JOIN webhook_endpoint w ON w.id = l.endpoint_id
UNION ALL
-- A last row, with only next_due_in and what the claim learnt: seconds until the
-- earliest delivery not leased here becomes due (a retry, a lease running out), so
-- the worker knows how long it may sleep without asking again. Ordered deliveries
-- left due wait for the one before them (whose end wakes its worker) or for an
-- older transaction to end: they are not worth asking again for at once.
-- It also makes this statement's commit asynchronous (set_config local to its own
-- transaction, so nothing is left on the session): waiting for the WAL flush was
-- most of the time from a producer's commit to the send (median 0.2 ms, p99 2.6 ms
-- here). If PostgreSQL crashes before the flush, the lease is lost and the delivery
-- is sent again; the first send's outcome is then logged as a late result. Nothing
-- is lost: the event and every outcome are committed synchronously.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL,
       (SELECT extract(epoch FROM min(q.due_at) - coalesce(%(now)s::timestamptz, now()))::float8
        FROM delivery_queue q
        WHERE q.delivery_id NOT IN (SELECT delivery_id FROM due)
          AND (q.txid IS NULL OR q.due_at > coalesce(%(now)s::timestamptz, now()))),
       (SELECT array_agg(endpoint_id) FROM learnt WHERE no_room AND blocked_for IS NULL),
       (SELECT array_agg(endpoint_id ORDER BY endpoint_id) FROM learnt WHERE blocked_for IS NOT NULL),
       (SELECT array_agg(blocked_for ORDER BY endpoint_id) FROM learnt WHERE blocked_for IS NOT NULL),
       (SELECT array_agg(DISTINCT o.endpoint_id) FROM oldest o
        WHERE NOT EXISTS (SELECT FROM endpoint_flow f WHERE f.endpoint_id = o.endpoint_id)),
       (SELECT array_agg(endpoint_id ORDER BY endpoint_id) FROM pace),
       (SELECT array_agg(lim ORDER BY endpoint_id) FROM pace),
       (SELECT count(*) FROM parked)
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit

-- name: record_results
-- Write back a batch of attempt outcomes. An outcome only changes the delivery if
-- the worker still holds that attempt's lease (same worker, series, attempt number
-- and lease end: a claim that a database crash undid reuses its attempt number, and
-- the same worker may take it again, but never with the same lease end); otherwise the lease was taken over, or this batch was already applied
-- before a lost reply, and the outcome is logged as a late result that changes
-- nothing. retry_after NULL means the delivery is finished. An 'unknown' outcome
-- is a send handed back at shutdown: it is logged as abandoned, like a lease that
-- ran out, and with retry_after 0 the delivery is due again at once. Each row is the
-- attempt's one log row, with its worker: this one, or (attempted_by) the one whose
-- lease on the last attempt ran out.
-- The batch arrives as one JSON array: psycopg dumps Python lists element by element,
-- which cost the worker more than the statement costs the database.
WITH r AS (
    SELECT *
    FROM jsonb_to_recordset(%(results)s::jsonb)
         AS r (delivery_id uuid, event_id uuid, endpoint_id text, org_id text, series int, attempt int,
               outcome delivery_outcome, retry_after float8, started_at timestamptz, duration_ms float8,
               http_status int, error_class text, error_message text, response_excerpt text,
               lease_until timestamptz, pause float8, attempted_by text)
),
finished AS (
    DELETE FROM delivery_queue q USING r
    WHERE q.delivery_id = r.delivery_id AND q.series = r.series AND q.attempt = r.attempt
      AND q.leased_by = %(worker_id)s AND q.due_at = r.lease_until
      AND r.retry_after IS NULL
    RETURNING q.delivery_id, r.lease_until, NULL::timestamptz AS next_attempt_at, q.endpoint_id, q.ordering_key,
              q.txid
),
-- An ordered delivery left the queue: the next of its key (put aside by claims while it
-- waited, see claim_deliveries) is due at once.
next_in_order AS (
    UPDATE delivery_queue q
    SET due_at = coalesce(%(now)s::timestamptz, now())
    FROM (SELECT DISTINCT endpoint_id, ordering_key FROM finished WHERE txid IS NOT NULL) k
    CROSS JOIN LATERAL (
        SELECT n.delivery_id FROM delivery_queue n
        WHERE n.endpoint_id = k.endpoint_id AND n.ordering_key = k.ordering_key AND n.txid IS NOT NULL
          AND n.delivery_id NOT IN (SELECT delivery_id FROM finished)
        ORDER BY n.txid, n.event_id
        LIMIT 1
    ) n
    WHERE q.delivery_id = n.delivery_id AND q.leased_by IS NULL
      AND q.due_at > coalesce(%(now)s::timestamptz, now())
),
retrying AS (
    UPDATE delivery_queue q
    SET due_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => r.retry_after),
        leased_by = NULL, leased_at = NULL
    FROM r
    WHERE q.delivery_id = r.delivery_id AND q.series = r.series AND q.attempt = r.attempt
      AND q.leased_by = %(worker_id)s AND q.due_at = r.lease_until
      AND r.retry_after IS NOT NULL
    RETURNING q.delivery_id, r.lease_until, q.due_at AS next_attempt_at
),
applied AS (
    SELECT delivery_id, lease_until, next_attempt_at FROM finished UNION ALL SELECT * FROM retrying
),
-- Each endpoint's share of the batch, from the outcomes that ended a lease (a late
-- result's lease had been taken over already). The allowance grows by one per
-- success up to max_in_flight and halves, once a batch, when the endpoint timed
-- out, could not be reached or answered 429/503; a Retry-After on a 429/503 (pause)
-- stops every claim for the endpoint meanwhile. The requests open are counted from
-- the leases (claim_deliveries): writing an outcome frees its slot by itself.
settled AS (
    SELECT r.endpoint_id,
           count(*) FILTER (WHERE r.outcome = 'succeeded') AS successes,
           bool_or(r.error_class IN ('timeout', 'connect_error') OR r.http_status IN (429, 503)) AS congested,
           max(r.pause) AS pause
    FROM r JOIN applied a USING (delivery_id, lease_until)
    -- Test events are sent outside the limits (leased by publish_test_event, not a claim).
    WHERE %(paced)s
    GROUP BY r.endpoint_id
),
-- Only rows that change are locked and written (a healthy endpoint at its ceiling
-- is left alone), in one order, so that two workers' batches never deadlock.
flow AS MATERIALIZED (
    SELECT f.endpoint_id, f.allowance FROM endpoint_flow f
    JOIN settled s USING (endpoint_id)
    JOIN webhook_endpoint w ON w.id = f.endpoint_id
    WHERE s.congested OR s.pause IS NOT NULL OR f.allowance < coalesce(w.max_in_flight, %(default_max_in_flight)s)
    ORDER BY f.endpoint_id
    FOR UPDATE OF f
),
-- Another worker wanted more of an endpoint than this one left it: the slots these
-- outcomes free are its turn (deliverer.delivery.wakeups).
room AS (
    SELECT pg_notify('outbox_delivery', 'room ' || f.endpoint_id || ' ' || f.wanted_by)
    FROM endpoint_flow f JOIN settled s USING (endpoint_id)
    WHERE f.wanted_by <> %(worker_id)s
      AND f.wanted_at > coalesce(%(now)s::timestamptz, now()) - interval '1 second'
),
paced AS (
    UPDATE endpoint_flow f
    SET allowance = CASE WHEN s.congested THEN greatest(1, f.allowance / 2)
                         ELSE least(coalesce(w.max_in_flight, %(default_max_in_flight)s), f.allowance + s.successes)
                    END,
        paused_until = CASE WHEN s.pause IS NULL THEN f.paused_until
                            ELSE greatest(f.paused_until, coalesce(%(now)s::timestamptz, now())
                                                          + make_interval(secs => s.pause)) END
    FROM settled s
    JOIN flow USING (endpoint_id)
    JOIN webhook_endpoint w ON w.id = s.endpoint_id
    WHERE f.endpoint_id = s.endpoint_id
)
INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, outcome,
                          next_attempt_at, worker_id, started_at, duration_ms, http_status,
                          error_class, error_message, response_excerpt)
SELECT CASE WHEN a.delivery_id IS NULL THEN 'late_result'::delivery_fact_kind
            WHEN r.outcome = 'unknown' THEN 'attempt_abandoned'::delivery_fact_kind
            ELSE 'attempt_finished'::delivery_fact_kind END,
       r.delivery_id, r.event_id, r.endpoint_id, r.org_id, r.series, r.attempt, r.outcome,
       a.next_attempt_at, coalesce(r.attempted_by, %(worker_id)s), r.started_at, r.duration_ms, r.http_status,
       r.error_class, r.error_message, r.response_excerpt
-- Joined on the lease too: after a database crash undid a claim, one batch can hold two
-- outcomes of one delivery (the lost lease's and the new one's), and only one applies.
FROM r LEFT JOIN applied a ON a.delivery_id = r.delivery_id AND a.lease_until = r.lease_until
-- Reading `room` sends its notifications (a plain SELECT in WITH runs only when read).
WHERE (SELECT count(*) FROM room) >= 0
RETURNING delivery_id, kind, next_attempt_at

-- name: update_endpoint_health
-- Keep each endpoint's failing_since: cleared by a success, set by the first of a
-- run of failures. An endpoint that answered 410 Gone, or has failed without one
-- success for disable_after seconds, is disabled with the reason. Rows that would
-- not change are not written. Returns the endpoints it disabled or whose run of
-- failures a success ended (recovered), for the caller to announce in the same
-- transaction. The state is judged again on the row as locked: of two workers
-- racing on one endpoint, only the first disables or recovers it.
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
               <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(disable_after)s) AS expired
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
    WHERE w.id = j.id AND w.enabled AND w.deleted_at IS NULL
      AND (j.gone OR j.expired OR (j.succeeded AND w.failing_since IS NOT NULL)
           OR (NOT j.succeeded AND w.failing_since IS NULL))
    RETURNING w.id, w.org_id, w.url, w.enabled, w.disabled_reason, w.updated_at, j.succeeded, j.failing_since
)
SELECT id, org_id, url, disabled_reason, updated_at, failing_since, enabled AS recovered
FROM updated WHERE NOT enabled OR succeeded

-- name: ensure_endpoint_flow
-- Make the endpoint_flow rows a claim found missing: for endpoints never claimed
-- before, and for all of them after a crash or a failover emptied the unlogged
-- table (which loses only the allowance learnt: the requests open are the leases).
INSERT INTO endpoint_flow (endpoint_id, allowance, tokens, tokens_at, active_at)
SELECT e.endpoint_id, %(initial_allowance)s, 0,
       -- an hour ago: the rate limit's bucket starts full
       coalesce(%(now)s::timestamptz, now()) - interval '1 hour', coalesce(%(now)s::timestamptz, now())
FROM unnest(%(endpoint_ids)s::text[]) AS e (endpoint_id)
ON CONFLICT (endpoint_id) DO NOTHING

-- name: presence_heartbeat
-- This worker is alive; returns the workers seen within alive_for seconds (this one
-- included, even on its first beat) and forgets those not seen for forget_after.
WITH beat AS (
    INSERT INTO deliverer_presence (worker_id, seen_at) VALUES (%(worker_id)s, now())
    ON CONFLICT (worker_id) DO UPDATE SET seen_at = excluded.seen_at
),
gone AS (
    DELETE FROM deliverer_presence WHERE seen_at < now() - make_interval(secs => %(forget_after)s)
)
SELECT ARRAY(SELECT worker_id FROM deliverer_presence
             WHERE seen_at >= now() - make_interval(secs => %(alive_for)s) AND worker_id <> %(worker_id)s
             UNION ALL SELECT %(worker_id)s
             ORDER BY 1)

-- name: pass_on_wake_up
-- Wake another worker: this one is full and more is due (see deliverer.delivery.wakeups).
SELECT pg_notify('outbox_delivery', %(payload)s)

-- name: presence_leave
DELETE FROM deliverer_presence WHERE worker_id = %(worker_id)s

-- name: seconds_until_due
-- Seconds until the earliest open delivery becomes due (a retry, or a lease
-- running out), measured on the database's clock; NULL when nothing is open.
-- Ordered deliveries already due wait for their turn instead (see claim_deliveries).
SELECT extract(epoch FROM min(due_at) - coalesce(%(now)s::timestamptz, now()))::float8
FROM delivery_queue
WHERE txid IS NULL OR due_at > coalesce(%(now)s::timestamptz, now())

-- name: due_backlog
-- The queue's due backlog for the dashboards: how many deliveries are due now
-- (counted up to a cap, so a huge backlog costs a bounded scan) and how long the
-- oldest has waited. Leases that ran out are due too: their worker is gone.
SELECT (SELECT count(*) FROM (SELECT 1 FROM delivery_queue WHERE due_at <= now() LIMIT %(cap)s) AS due),
       coalesce(extract(epoch FROM now() - min(due_at)), 0)::float8
FROM delivery_queue
WHERE due_at <= now()
