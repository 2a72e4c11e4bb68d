"""Reading requests: JSON bodies, typed fields, timestamps, page limits, ids and filters.

Each refusal is an ApiError naming the field (or query parameter) it is about. What
may be registered as an endpoint is checked by ``deliverer.registry``, not here, so
the API and the CLI refuse the same input with the same message.
"""

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from deliverer.api.errors import ApiError, not_found
from deliverer.facts import Outcome
from outbox.catalog import EVENT_TYPES

MAX_PAGE = 100
OUTCOMES = tuple(Outcome)


async def json_object(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    """The body as a JSON object with no field outside ``allowed`` and no NUL anywhere."""
    raw = await request.read()
    if not raw:
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the request body must be a JSON object")
    for name, value in body.items():
        if _has_nul(value):
            raise ApiError(422, "invalid_request", f"{name} contains a NUL character, which is not allowed", name)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
                       unknown[0])
    return body


def _has_nul(value: Any) -> bool:
    """PostgreSQL text cannot hold NUL characters, so they are refused at the door."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def typed(body: dict[str, Any], name: str, kind: type | tuple[type, ...], label: str, *,
          required: bool = False) -> Any:
    """``body[name]`` if it is of ``kind`` (``label`` says what that is), None if absent and optional."""
    if name not in body:
        if required:
            raise ApiError(422, "invalid_request", f"{name} is required ({label})", name)
        return None
    value = body[name]  # an explicit null is a wrong type, not an absent field
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ApiError(422, "invalid_request", f"{name} must be {label}", name)
    return value


def event_list(body: dict[str, Any]) -> list[str] | None:
    events: list[str] | None = typed(body, "events", list, 'a list of event types, or ["*"] for all')
    if events is not None and not all(isinstance(e, str) for e in events):
        raise ApiError(422, "invalid_request", "events must be a list of strings", "events")
    return events


def webhook_changes(body: dict[str, Any]) -> dict[str, Any]:
    """An update's changes as ``registry.endpoints.update`` takes them; events and the limits only when
    sent, since an absent one keeps the endpoint's and an explicit one (null too) replaces it. The
    limits' values are checked by the registry, as the CLI's are."""
    changes: dict[str, Any] = {
        "url": typed(body, "url", str, "an https:// URL"),
        "description": typed(body, "description", str, "a string"),
        "enabled": typed(body, "enabled", bool, "true or false"),
    }
    if "events" in body:
        changes["event_types"] = event_list(body)
    for name in ("max_in_flight", "rate_limit"):  # null is the default, so only a field left out is kept
        if name in body:
            changes[name] = body[name]
    return changes


def timestamp(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be an ISO-8601 timestamp, e.g. 2024-11-23T10:00:00Z",
                       name) from None
    if parsed.tzinfo is None:
        raise ApiError(422, "invalid_request", f"{name} needs a UTC offset, e.g. 2024-11-23T10:00:00Z", name)
    return parsed


def recovery_window(body: dict[str, Any]) -> tuple[datetime, datetime]:
    """[since, until) of a recovery; until defaults to just after now, so events of this second count."""
    since = timestamp(typed(body, "since", str, "an ISO-8601 timestamp", required=True), "since")
    until_raw = typed(body, "until", str, "an ISO-8601 timestamp")
    until = timestamp(until_raw, "until") if until_raw is not None else datetime.now(UTC) + timedelta(seconds=1)
    if until <= since:
        raise ApiError(422, "invalid_request", "until must be later than since", "until")
    return since, until


def known_query(request: web.Request, allowed: set[str]) -> MultiMapping[str]:
    """The query string, refused if it has a parameter outside ``allowed``."""
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown query parameter {unknown[0]!r}", unknown[0])
    return request.query


def query_timestamp(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    return None if value is None else timestamp(value, name)


def page_limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(422, "invalid_request", f"limit must be a whole number from 1 to {MAX_PAGE}", "limit")
    return int(raw)


def outcome_filter(value: str | None) -> str | None:
    if value is not None and value not in OUTCOMES:
        raise ApiError(422, "invalid_request", f"outcome must be one of {', '.join(OUTCOMES)}", "outcome")
    return value


def event_type_filter(value: str | None, name: str) -> str | None:
    return None if value is None else _event_type(value, name)


def event_types_filter(value: str, name: str) -> list[str]:
    """A comma-separated list of event types."""
    return [_event_type(t, name) for t in value.split(",")]


def _event_type(value: str, name: str) -> str:
    if value not in EVENT_TYPES:
        raise ApiError(422, "invalid_request", f"{name} must be one of {', '.join(EVENT_TYPES)}", name)
    return value


def parse_id(parse: Callable[[str], uuid.UUID], raw: str, what: str) -> uuid.UUID:
    """A public id (``dlv_…``, ``evt_…``) as its UUID; one that cannot be parsed is simply not found."""
    try:
        return parse(raw)
    except ValueError:
        raise not_found(what) from None
