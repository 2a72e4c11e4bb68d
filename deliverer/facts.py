"""The words the delivery log is written in, named once for every layer.

``FactKind`` and ``Outcome`` are the database's enum types ``delivery_fact_kind``
and ``delivery_outcome`` (schema.sql); a test reads both back from a migrated
database and fails if they drift apart. ``ErrorClass`` is what an attempt's
``error_class`` column and the ``outcome`` label of ``deliverer_attempts_total``
may say; receivers' own words (status, message, excerpt) go in the other columns.

Being ``StrEnum``s they compare equal to, and serialise as, the plain strings the
database, the JSON API and the metrics already use.
"""

from enum import StrEnum


class FactKind(StrEnum):
    """One row of delivery_log: what happened to a delivery."""

    SCHEDULED = "scheduled"
    REPLAY_REQUESTED = "replay_requested"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_FINISHED = "attempt_finished"
    ATTEMPT_ABANDONED = "attempt_abandoned"
    LATE_RESULT = "late_result"


class Outcome(StrEnum):
    """An attempt's result as the log records it: unknown when the send was cut off or its worker died."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


class ErrorClass(StrEnum):
    """Why an attempt did not succeed, as a bounded set (safe as a metric label)."""

    HTTP_3XX = "http_3xx"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    TLS_ERROR = "tls_error"
    PROTOCOL_ERROR = "protocol_error"
    SSRF_BLOCKED = "ssrf_blocked"
    PROXY_ERROR = "proxy_error"  # the egress proxy was unreachable or refused the tunnel
    INVALID_URL = "invalid_url"
    ENDPOINT_DISABLED = "endpoint_disabled"
    SHUTDOWN = "shutdown"
    NO_ROOM = "no_room"  # leased, never sent: the endpoint had no room for it while its lease lasted
    LEASE_EXPIRED = "lease_expired"  # its worker did not report an outcome before the lease ran out
    OTHER = "other"

    @classmethod
    def for_status(cls, status: int) -> "ErrorClass":
        """The class of a non-2xx HTTP answer."""
        if 300 <= status < 400:
            return cls.HTTP_3XX
        if 400 <= status < 500:
            return cls.HTTP_4XX
        if 500 <= status < 600:
            return cls.HTTP_5XX
        return cls.PROTOCOL_ERROR
