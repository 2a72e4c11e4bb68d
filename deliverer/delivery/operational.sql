-- The operator events' SQL (deliverer.delivery.operational). Blocks start with "-- name: <name>".

-- name: last_failures
-- Each endpoint's most recent failed attempt, for the operator events' last_error:
-- read backwards along delivery_log_endpoint, only when an endpoint changes state.
-- A failure recorded because the endpoint was disabled says nothing of the receiver.
SELECT e.endpoint_id, f.error_class, f.http_status, f.error_message, f.started_at
FROM unnest(%(endpoint_ids)s::text[]) AS e (endpoint_id)
LEFT JOIN LATERAL (
    SELECT l.error_class, l.http_status, l.error_message, l.started_at
    FROM delivery_log l
    WHERE l.endpoint_id = e.endpoint_id AND l.kind = 'attempt_finished' AND l.outcome = 'failed'
      AND l.error_class IS DISTINCT FROM 'endpoint_disabled'
    ORDER BY l.seq DESC
    LIMIT 1
) f ON true

-- name: failing_endpoints
-- The endpoints some worker has seen failing (failing_since set), for every worker to
-- notice the success that ends the run whoever saw the failures.
SELECT id FROM webhook_endpoint WHERE failing_since IS NOT NULL AND enabled AND deleted_at IS NULL
