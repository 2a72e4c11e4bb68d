"""Every Prometheus metric the deliverer and the API export, named once, here.

Labels are bounded sets only: an outcome class, a delivery result, an
operation name, an HTTP route template and status class. Never an endpoint URL,
an org, an event id or a raw status code: those would make a time series per
customer and grow without limit. deploy/ (dashboard and alerts) and docs/operations.md
refer to these names, and a test checks that they agree.
"""

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

OUTCOME_CLASSES = ("success", "http_3xx", "http_4xx", "http_5xx", "timeout", "connect_error", "tls_error",
                   "protocol_error", "proxy_error", "ssrf_blocked", "endpoint_disabled", "shutdown", "no_room", "other")

DB_OPERATIONS = ("claim", "record", "listen", "backlog", "partitions")
"""What ``deliverer_db_errors_total`` counts errors of: each series exists from the start, at 0, so the
dashboard's panel and the alert's rate have data before the first error (tests/system/test_prometheus.py)."""

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


def outcome_class(error_class: str | None) -> str:
    """The bounded label for an attempt's outcome (None means it succeeded)."""
    if error_class is None:
        return "success"
    return error_class if error_class in OUTCOME_CLASSES else "other"


class Metrics:
    """The deliverer's metrics on one registry (the default one, or a fresh one in tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.attempts = Counter(
            "deliverer_attempts_total", "Delivery attempts by outcome class.", ["outcome"], registry=registry)
        self.attempt_duration = Histogram(
            "deliverer_attempt_duration_seconds", "Duration of one HTTP attempt, from connect to the end of "
            "the (capped) response.", registry=registry, buckets=_LATENCY_BUCKETS)
        self.end_to_end = Histogram(
            "deliverer_end_to_end_latency_seconds", "From the event's commit to a 2xx from the receiver.",
            registry=registry, buckets=_LATENCY_BUCKETS)
        self.retries_scheduled = Counter(
            "deliverer_retries_scheduled_total", "Failed attempts that scheduled another attempt.", registry=registry)
        self.deliveries_failed = Counter(
            "deliverer_deliveries_failed_total", "Deliveries that failed their last automatic attempt.",
            registry=registry)
        self.endpoints_disabled = Counter(
            "deliverer_endpoints_disabled_total", "Endpoints disabled automatically (410 Gone, or failing for "
            "DELIVERER_DISABLE_AFTER).", registry=registry)
        self.deliveries_due = Gauge(
            "deliverer_deliveries_due", "Deliveries due now and not leased (the whole queue, not this pod: "
            "aggregate with max).", registry=registry)
        self.oldest_due_age = Gauge(
            "deliverer_oldest_due_age_seconds", "How long the oldest due delivery has been waiting (the whole "
            "queue: aggregate with max).", registry=registry)
        self.in_flight = Gauge(
            "deliverer_in_flight", "Attempts being sent by this worker right now.", registry=registry)
        self.claim_batch = Histogram(
            "deliverer_claim_batch_size", "Deliveries leased per claim.", registry=registry,
            buckets=(0, 1, 2, 5, 10, 25, 50, 100, 250, 500))
        self.last_poll = Gauge(
            "deliverer_last_successful_poll_timestamp_seconds", "Unix time of this worker's last successful "
            "claim query.", registry=registry)
        self.heartbeat = Gauge(
            "deliverer_heartbeat_timestamp_seconds", "Unix time of this process's last event-loop heartbeat.",
            registry=registry)
        self.db_errors = Counter(
            "deliverer_db_errors_total", "Database errors by operation.", ["operation"], registry=registry)
        self.api_requests = Counter(
            "deliverer_api_requests_total", "API requests by route template, method and status class.",
            ["route", "method", "status"], registry=registry)
        self.api_duration = Histogram(
            "deliverer_api_request_duration_seconds", "API request duration by route template.", ["route"],
            registry=registry, buckets=_LATENCY_BUCKETS)
        for outcome in OUTCOME_CLASSES:
            self.attempts.labels(outcome)
        for operation in DB_OPERATIONS:
            self.db_errors.labels(operation)


METRICS = Metrics()
