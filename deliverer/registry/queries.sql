-- What customers register: endpoints (with their sealed secrets) and API keys. Blocks start with "-- name: <name>".
-- Statements that schedule or expire take %(now)s: NULL means the database's
-- clock, a timestamp lets tests drive time instead of sleeping.
-- delivery_log.kind and outcome are enum types (see schema.sql). A quoted literal,
-- or a parameter used only there, is read as the enum; any other text (a column, a
-- CASE or VALUES of literals, a parameter also cast to text) needs a cast to be
-- compared with them, and gets one here where it is written too: a constant is then
-- converted once, not row by row.

-- name: insert_endpoint
-- Registers nothing (no row returned) when the org already has max_endpoints.
INSERT INTO webhook_endpoint (id, org_id, url, secret, event_types, description, max_in_flight, rate_limit,
                              headers, auth_type, auth, ordering)
SELECT %(id)s, %(org_id)s, %(url)s, %(secret)s, %(event_types)s, %(description)s,
       %(max_in_flight)s::integer, %(rate_limit)s::double precision,
       %(headers)s::jsonb, %(auth_type)s, %(auth)s, %(ordering)s
WHERE (SELECT count(*) FROM webhook_endpoint
       WHERE org_id = %(org_id)s AND deleted_at IS NULL) < %(max_endpoints)s
RETURNING id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason,
          max_in_flight, rate_limit,
          (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(headers) k) AS header_names, auth_type, ordering

-- name: list_endpoints
SELECT id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason,
       max_in_flight, rate_limit,
       (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(headers) k) AS header_names, auth_type, ordering
FROM webhook_endpoint
WHERE deleted_at IS NULL AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s)
ORDER BY created_at, id

-- name: set_endpoint_enabled
-- Enabling starts afresh: no reason to be disabled, no run of failures.
UPDATE webhook_endpoint
SET enabled = %(enabled)s, updated_at = now(),
    disabled_reason = CASE WHEN %(enabled)s THEN NULL ELSE disabled_reason END,
    failing_since = CASE WHEN %(enabled)s THEN NULL ELSE failing_since END
WHERE id = %(id)s AND deleted_at IS NULL
RETURNING id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason,
          max_in_flight, rate_limit,
          (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(headers) k) AS header_names, auth_type, ordering

-- name: insert_api_key
INSERT INTO api_key (id, org_id, key_hash, prefix) VALUES (%(id)s, %(org_id)s, %(key_hash)s, %(prefix)s)
RETURNING id, org_id, prefix, created_at

-- name: org_for_api_key
SELECT org_id, id AS key_id FROM api_key WHERE key_hash = %(key_hash)s AND revoked_at IS NULL

-- name: get_endpoint
SELECT id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason,
       max_in_flight, rate_limit,
       (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(headers) k) AS header_names, auth_type, ordering
FROM webhook_endpoint
WHERE id = %(id)s AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s) AND deleted_at IS NULL

-- name: update_endpoint
-- NULL leaves a field as it is; event_types, the limits, headers and auth change only
-- when their set_ flag is true, since NULL is a value of theirs (every type; the
-- default; none).
-- A NULL org_id (the CLI, an operator) matches the endpoint of any org.
UPDATE webhook_endpoint
SET url = coalesce(%(url)s, url),
    event_types = CASE WHEN %(set_event_types)s THEN %(event_types)s::text[] ELSE event_types END,
    max_in_flight = CASE WHEN %(set_max_in_flight)s THEN %(max_in_flight)s::integer ELSE max_in_flight END,
    rate_limit = CASE WHEN %(set_rate_limit)s THEN %(rate_limit)s::double precision ELSE rate_limit END,
    headers = CASE WHEN %(set_headers)s THEN %(headers)s::jsonb ELSE headers END,
    auth_type = CASE WHEN %(set_auth)s THEN %(auth_type)s ELSE auth_type END,
    auth = CASE WHEN %(set_auth)s THEN %(auth)s ELSE auth END,
    description = coalesce(%(description)s, description),
    ordering = coalesce(%(ordering)s, ordering),
    enabled = coalesce(%(enabled)s, enabled),
    disabled_reason = CASE WHEN %(enabled)s THEN NULL ELSE disabled_reason END,
    failing_since = CASE WHEN %(enabled)s THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = %(id)s AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s) AND deleted_at IS NULL
RETURNING id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason,
          max_in_flight, rate_limit,
          (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(headers) k) AS header_names, auth_type, ordering

-- name: delete_endpoint
-- Endpoints are kept for the log's sake; deleted ones get nothing more.
UPDATE webhook_endpoint SET deleted_at = now(), enabled = false, updated_at = now()
WHERE id = %(id)s AND org_id = %(org_id)s AND deleted_at IS NULL
RETURNING id

-- name: rotate_endpoint_secret
-- The old secret stays valid for grace_seconds: requests are signed with both meanwhile.
UPDATE webhook_endpoint
SET previous_secret = secret,
    previous_secret_expires_at = now() + make_interval(secs => %(grace_seconds)s),
    secret = %(secret)s,
    updated_at = now()
WHERE id = %(id)s AND org_id = %(org_id)s AND deleted_at IS NULL
RETURNING id, org_id, url, event_types, description, enabled, created_at, updated_at, disabled_reason,
          max_in_flight, rate_limit,
          (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(headers) k) AS header_names, auth_type, ordering

-- name: endpoint_pacing
-- The endpoint's live limits state, shared by every deliverer (see deliverer.delivery.limits):
-- requests open (its leases that have not run out), the allowance within the endpoint's
-- ceiling, a Retry-After pause still running.
SELECT (SELECT count(*) FROM delivery_queue q
        WHERE q.endpoint_id = f.endpoint_id AND q.leased_by IS NOT NULL AND q.due_at > now())::int AS in_flight,
       least(f.allowance, coalesce(w.max_in_flight, %(default_max_in_flight)s)) AS allowance,
       CASE WHEN f.paused_until > now() THEN f.paused_until END AS paused_until
FROM endpoint_flow f
JOIN webhook_endpoint w ON w.id = f.endpoint_id
WHERE f.endpoint_id = %(id)s

-- name: endpoint_secrets
-- Every stored secret (and sealed header value and auth), for re-sealing under the
-- current key. FOR UPDATE: a rotation running meanwhile waits instead of being overwritten.
SELECT id, secret, previous_secret, headers, auth FROM webhook_endpoint ORDER BY id FOR UPDATE

-- name: store_sealed_secrets
UPDATE webhook_endpoint
SET secret = %(secret)s, previous_secret = %(previous_secret)s, headers = %(headers)s::jsonb, auth = %(auth)s
WHERE id = %(id)s

-- name: find_endpoint_by_url
-- What sending a test event needs; the previous secret only while its grace lasts.
SELECT id, org_id, url, secret,
       CASE WHEN previous_secret_expires_at > now() THEN previous_secret END AS previous_secret, enabled,
       headers, auth
FROM webhook_endpoint
WHERE (%(org_id)s::text IS NULL OR org_id = %(org_id)s) AND url = %(url)s AND deleted_at IS NULL
ORDER BY enabled DESC, created_at
LIMIT 1

-- name: endpoint_for_test
SELECT id, org_id, url, secret,
       CASE WHEN previous_secret_expires_at > now() THEN previous_secret END AS previous_secret, enabled,
       headers, auth
FROM webhook_endpoint
WHERE id = %(id)s AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s) AND deleted_at IS NULL
