"""Reading requests: JSON bodies (as the ``models``), timestamps, page limits, ids and filters.

Each refusal is an ApiError naming the field (or query parameter) it is about. What
may be registered as an endpoint is checked by ``deliverer.registry``, not here, so
the API and the CLI refuse the same input with the same message.
"""

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from multidict import MultiMapping
from pydantic import ValidationError

from deliverer.api import models
from deliverer.api.errors import ApiError, not_found
from deliverer.facts import Outcome
from outbox.catalog import EVENT_TYPES, OPERATOR_EVENT_TYPES

MAX_PAGE = 100
DEFAULT_PAGE = 50
OUTCOMES = tuple(Outcome)


R = TypeVar("R", bound=models.Request)


async def json_body(request: web.Request, model: type[R]) -> R:
    """The body as ``model``: a JSON object with no field outside it, none of the wrong type, no NUL anywhere."""
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
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _refusal(model, exc) from None


def _refusal(model: type[models.Request], exc: ValidationError) -> ApiError:
    """The first of pydantic's complaints in the API's words, an unknown field before any other."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    name = str(errors[0]["loc"][0])
    if errors[0]["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(model.model_fields))
        return ApiError(422, "invalid_request", f"unknown field {name!r}; allowed: {allowed}", name)
    label = next(m.text for m in model.model_fields[name].metadata if isinstance(m, models.Label))
    if errors[0]["type"] == "missing":
        return ApiError(422, "invalid_request", f"{name} is required ({label})", name)
    return ApiError(422, "invalid_request", f"{name} must be {label}", name)


def _has_nul(value: Any) -> bool:
    """PostgreSQL text cannot hold NUL characters, so they are refused at the door."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def webhook_changes(body: models.WebhookUpdate) -> dict[str, Any]:
    """An update's changes as ``registry.endpoints.update`` takes them: only the fields sent, since an
    absent one keeps the endpoint's and an explicit one (null too, for the limits) replaces it. The
    values are checked by the registry, as the CLI's are."""
    names = {"events": "event_types"}
    return {names.get(name, name): getattr(body, name) for name in body.model_fields_set}


def timestamp(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be an ISO-8601 timestamp, e.g. 2024-11-23T10:00:00Z",
                       name) from None
    if parsed.tzinfo is None:
        raise ApiError(422, "invalid_request", f"{name} needs a UTC offset, e.g. 2024-11-23T10:00:00Z", name)
    return parsed


def recovery_window(body: models.RecoverRequest) -> tuple[datetime, datetime]:
    """[since, until) of a recovery; until defaults to just after now, so events of this second count."""
    since = timestamp(body.since, "since")
    until = timestamp(body.until, "until") if "until" in body.model_fields_set else (
        datetime.now(UTC) + timedelta(seconds=1))
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
    raw = request.query.get("limit", str(DEFAULT_PAGE))
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
    if value not in EVENT_TYPES and value not in OPERATOR_EVENT_TYPES:
        raise ApiError(422, "invalid_request",
                       f"{name} must be one of {', '.join((*EVENT_TYPES, *OPERATOR_EVENT_TYPES))}", name)
    return value


def parse_id(parse: Callable[[str], uuid.UUID], raw: str, what: str) -> uuid.UUID:
    """A public id (``dlv_…``, ``evt_…``) as its UUID; one that cannot be parsed is simply not found."""
    try:
        return parse(raw)
    except ValueError:
        raise not_found(what) from None
