"""The event catalog: which event types exist and what their data must contain.

The shapes are DocExtract's public webhook contract. Receivers read these
fields by name, so a producer must not be able to send an event with a field
missing or of the wrong type. Fields not listed here are allowed and passed
through (receivers ignore what they do not know), which keeps additions
backwards compatible.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from outbox.errors import InvalidPayload, UnknownEventType


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_object(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_timestamp(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None


@dataclass(frozen=True)
class Field:
    name: str
    check: Callable[[Any], bool]
    expected: str
    required: bool = True
    equals: Any = None


def _str(name: str, *, required: bool = True) -> Field:
    return Field(name, _is_str, "a string", required)


def _int(name: str) -> Field:
    return Field(name, _is_int, "an integer")


def _number(name: str) -> Field:
    return Field(name, _is_number, "a number")


def _object(name: str, *, required: bool = True) -> Field:
    return Field(name, _is_object, "a JSON object", required)


def _timestamp(name: str) -> Field:
    return Field(name, _is_timestamp, "an ISO-8601 timestamp with a UTC offset, e.g. 2024-11-23T10:00:00Z")


def _constant(name: str, value: str) -> Field:
    return Field(name, lambda v: v == value, f"the string {value!r}", equals=value)


_ERROR_DETAILS = (_str("code"), _str("message"), _str("suggestion", required=False))

CATALOG: dict[str, tuple[Field, ...]] = {
    "job.completed": (
        _str("id"), _str("org_id"), _str("extractor_id"), _constant("status", "completed"),
        _object("extracted_data"), _object("confidence"), _int("processing_time_ms"),
        _number("cost_credits"), _object("metadata", required=False),
        _timestamp("created_at"), _timestamp("completed_at"),
    ),
    "job.failed": (
        _str("id"), _str("org_id"), _str("extractor_id"), _constant("status", "failed"),
        _object("error_details"), _int("processing_time_ms"), _number("cost_credits"),
        _object("metadata", required=False), _timestamp("created_at"), _timestamp("failed_at"),
    ),
    "credits.low_balance": (
        _str("org_id"), _number("current_balance"), _number("threshold"),
        _number("percentage_remaining"), _int("estimated_jobs_remaining"), _timestamp("timestamp"),
    ),
    "credits.depleted": (
        _str("org_id"), _timestamp("depleted_at"), _int("jobs_queued"),
    ),
    "webhook.test": (
        _str("message"), _timestamp("timestamp"),
    ),
    # Operational: one of the org's endpoints was disabled automatically (410 Gone,
    # or failing for days). Sent to the org's other endpoints that subscribe to it.
    "webhook.endpoint_disabled": (
        _str("endpoint_id"), _str("url"), _str("reason"), _timestamp("disabled_at"),
    ),
}

EVENT_TYPES: tuple[str, ...] = tuple(CATALOG)
OPERATIONAL_EVENT_TYPES: tuple[str, ...] = ("webhook.endpoint_disabled",)
"""Ours, about the webhooks themselves; the rest are the customer contract's."""
CONTRACT_EVENT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t not in OPERATIONAL_EVENT_TYPES)


def _check_fields(event_type: str, where: str, data: Mapping[str, Any], fields: tuple[Field, ...]) -> None:
    for field in fields:
        if field.name not in data or data[field.name] is None:
            if field.required:
                raise InvalidPayload(f"{event_type}: {where}{field.name} is required ({field.expected})")
            continue
        value = data[field.name]
        if not field.check(value):
            raise InvalidPayload(
                f"{event_type}: {where}{field.name} must be {field.expected}, got {value!r:.80}"
            )


def validate(event_type: str, data: Any, org_id: str) -> None:
    """Raise if ``data`` is not a valid payload for ``event_type`` in ``org_id``."""
    if event_type not in CATALOG:
        raise UnknownEventType(
            f"unknown event type {event_type!r}; known types are: {', '.join(EVENT_TYPES)}"
        )
    if not isinstance(data, Mapping):
        raise InvalidPayload(f"{event_type}: data must be a JSON object (a dict), got {type(data).__name__}")
    _check_fields(event_type, "", data, CATALOG[event_type])
    if event_type == "job.failed":
        _check_fields(event_type, "error_details.", data["error_details"], _ERROR_DETAILS)
    if "org_id" in data and data["org_id"] != org_id:
        raise InvalidPayload(
            f"{event_type}: data.org_id is {data['org_id']!r} but the event is published for org "
            f"{org_id!r}; they must be the same"
        )
