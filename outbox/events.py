"""Typed builders for DocExtract's five events.

Each builder takes Python values (``datetime`` for times, numbers for amounts)
and returns an :class:`outbox.Event` whose data is exactly the customer
contract's payload: the same fields in the same order, ids with their prefixes
(``job_``, ``org_``, ``ext_``), and times as ISO-8601 UTC strings with whole
seconds and a ``Z`` (``2024-11-23T10:00:00Z``). A builder raises
:class:`outbox.InvalidPayload` instead of returning something a receiver could
trip over, so code that publishes what a builder returns cannot send a
malformed event::

    event = outbox.events.webhook_test(org_id="org_xyz789", timestamp=datetime.now(UTC))
    outbox.publish_many(conn, [event])

The builders are pure: they read no clock and touch no database. Every result
also passes :func:`outbox.catalog.validate`, the check ``publish`` applies.
"""

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from outbox import catalog
from outbox.errors import InvalidPayload
from outbox.publish import Event, serialize

Number = int | float | Decimal

JOB_PREFIX = "job_"
ORG_PREFIX = "org_"
EXTRACTOR_PREFIX = "ext_"

TEST_MESSAGE = "This is a test webhook event"
"""The message of ``webhook.test`` in the customer docs."""


def format_timestamp(moment: datetime) -> str:
    """``moment`` as the contract writes times: UTC, whole seconds (truncated), ``Z`` suffix."""
    if not isinstance(moment, datetime):
        raise InvalidPayload(f"a timestamp must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidPayload(
            f"timestamp {moment.isoformat()} has no time zone; pass an aware datetime, e.g. datetime.now(UTC)"
        )
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def _time(name: str, moment: Any) -> str:
    try:
        return format_timestamp(moment)
    except InvalidPayload as exc:
        raise InvalidPayload(f"{name}: {exc}") from None


def _prefixed(name: str, value: Any, prefix: str) -> str:
    if not isinstance(value, str) or len(value) <= len(prefix) or not value.startswith(prefix):
        raise InvalidPayload(f"{name} must be a string like {prefix}abc123, got {value!r:.80}")
    return value


def check_org_id(org_id: Any) -> str:
    """``org_id`` if it is an org id (``org_…``); raises InvalidPayload otherwise."""
    return _prefixed("org_id", org_id, ORG_PREFIX)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidPayload(f"{name} must be a non-empty string, got {value!r:.80}")
    return value


def number(name: str, value: Any, *, minimum: Number | None = 0) -> int | float:
    """A finite JSON number: ``Decimal`` (as from a NUMERIC column) becomes int when whole, else float."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise InvalidPayload(f"{name} must be a number, got {value!r:.80}")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidPayload(f"{name} must be a finite number, got {value}")
        value = int(value) if value == value.to_integral_value() else float(value)
    checked: int | float = value
    if isinstance(checked, float) and not math.isfinite(checked):
        raise InvalidPayload(f"{name} must be a finite number, got {checked}")
    if minimum is not None and checked < minimum:
        raise InvalidPayload(f"{name} must be at least {minimum}, got {checked}")
    return checked


def count(name: str, value: Any) -> int:
    """A non-negative integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidPayload(f"{name} must be a non-negative integer, got {value!r:.80}")
    return value


def _object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidPayload(f"{name} must be a mapping (a JSON object), got {type(value).__name__}")
    return dict(value)


def _event(event_type: str, data: dict[str, Any], org_id: str) -> Event:
    catalog.validate(event_type, data, org_id)
    serialize(event_type, data)  # raises for data that is not JSON or too large
    return Event(event_type, data, org_id)


def job_completed(*, job_id: str, org_id: str, extractor_id: str, extracted_data: Mapping[str, Any],
                  confidence: Mapping[str, Any], processing_time_ms: int, cost_credits: Number,
                  created_at: datetime, completed_at: datetime,
                  metadata: Mapping[str, Any] | None = None) -> Event:
    """``job.completed``: the job ``job_id`` finished and extracted ``extracted_data``.

    ``metadata`` (the customer's own key-values given with the job) is sent as
    ``{}`` when there is none. :func:`outbox.jobs.job_finished` computes
    ``processing_time_ms`` from the job's timings.
    """
    org_id = _prefixed("org_id", org_id, ORG_PREFIX)
    data = {
        "id": _prefixed("job_id", job_id, JOB_PREFIX),
        "org_id": org_id,
        "extractor_id": _prefixed("extractor_id", extractor_id, EXTRACTOR_PREFIX),
        "status": "completed",
        "extracted_data": _object("extracted_data", extracted_data),
        "confidence": _object("confidence", confidence),
        "processing_time_ms": count("processing_time_ms", processing_time_ms),
        "cost_credits": number("cost_credits", cost_credits),
        "metadata": _object("metadata", {} if metadata is None else metadata),
        "created_at": _time("created_at", created_at),
        "completed_at": _time("completed_at", completed_at),
    }
    return _event("job.completed", data, org_id)


def job_failed(*, job_id: str, org_id: str, extractor_id: str, code: str, message: str,
               processing_time_ms: int, cost_credits: Number, created_at: datetime, failed_at: datetime,
               suggestion: str | None = None, metadata: Mapping[str, Any] | None = None) -> Event:
    """``job.failed``: the job ``job_id`` failed with the error ``code`` (e.g. ``document_unreadable``).

    ``message`` says what went wrong and ``suggestion``, when given, what the
    customer can do about it; receivers show both to their users. A missing
    suggestion is left out of ``error_details``.
    """
    org_id = _prefixed("org_id", org_id, ORG_PREFIX)
    error_details = {"code": _text("code", code), "message": _text("message", message)}
    if suggestion is not None:
        error_details["suggestion"] = _text("suggestion", suggestion)
    data = {
        "id": _prefixed("job_id", job_id, JOB_PREFIX),
        "org_id": org_id,
        "extractor_id": _prefixed("extractor_id", extractor_id, EXTRACTOR_PREFIX),
        "status": "failed",
        "error_details": error_details,
        "processing_time_ms": count("processing_time_ms", processing_time_ms),
        "cost_credits": number("cost_credits", cost_credits),
        "metadata": _object("metadata", {} if metadata is None else metadata),
        "created_at": _time("created_at", created_at),
        "failed_at": _time("failed_at", failed_at),
    }
    return _event("job.failed", data, org_id)


def credits_low_balance(*, org_id: str, current_balance: Number, threshold: Number,
                        percentage_remaining: Number, estimated_jobs_remaining: int,
                        timestamp: datetime) -> Event:
    """``credits.low_balance``: the org's balance fell below its threshold.

    Application code normally lets :func:`outbox.credits.publish_balance_change`
    decide when to send this and compute the derived fields.
    """
    org_id = _prefixed("org_id", org_id, ORG_PREFIX)
    data = {
        "org_id": org_id,
        "current_balance": number("current_balance", current_balance, minimum=None),
        "threshold": number("threshold", threshold),
        "percentage_remaining": number("percentage_remaining", percentage_remaining),
        "estimated_jobs_remaining": count("estimated_jobs_remaining", estimated_jobs_remaining),
        "timestamp": _time("timestamp", timestamp),
    }
    return _event("credits.low_balance", data, org_id)


def credits_depleted(*, org_id: str, depleted_at: datetime, jobs_queued: int) -> Event:
    """``credits.depleted``: the org's balance reached zero with ``jobs_queued`` jobs waiting for credits."""
    org_id = _prefixed("org_id", org_id, ORG_PREFIX)
    data = {
        "org_id": org_id,
        "depleted_at": _time("depleted_at", depleted_at),
        "jobs_queued": count("jobs_queued", jobs_queued),
    }
    return _event("credits.depleted", data, org_id)


def webhook_test(*, org_id: str, timestamp: datetime, message: str = TEST_MESSAGE) -> Event:
    """``webhook.test``: the event a customer asks for to check their endpoint; ``org_id`` routes it."""
    org_id = _prefixed("org_id", org_id, ORG_PREFIX)
    data = {"message": _text("message", message), "timestamp": _time("timestamp", timestamp)}
    return _event("webhook.test", data, org_id)
