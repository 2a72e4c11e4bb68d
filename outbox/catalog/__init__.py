"""The event catalog: which event types exist and what their data must contain.

Each event type's payload is a JSON Schema (draft 2020-12) in this package,
``<event type>.json``: the one source for the check ``publish`` applies, for the
OpenAPI document's ``webhooks`` section and for the docs, so a customer can
generate receiver types from exactly what producers are held to.

The shapes are DocExtract's public webhook contract. Receivers read these
fields by name, so a producer must not be able to send an event with a field
missing or of the wrong type. Fields not listed are allowed and passed through
(receivers ignore what they do not know), which keeps additions backwards
compatible.

``validate`` interprets the few keywords the schemas use (``type``, ``const``,
``required``, ``properties``, ``format: date-time``) instead of depending on a
JSON Schema library: producers install this package with psycopg alone. A test
holds the schemas to that subset and checks that ``jsonschema`` agrees.

The operator's event types (``operator/<event type>.json``: ``endpoint.disabled``,
``endpoint.recovered``, ``delivery.exhausted``) are the deliverer's news about the
health of delivery, for the people who run it. They are not part of the customer
contract: ``EVENT_TYPES``, the OpenAPI ``webhooks`` section and the customer docs
leave them out, and only endpoints of ``OPERATOR_ORG`` receive them.
"""

import json
import re
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from typing import Any

from outbox.errors import InvalidPayload, UnknownEventType

EVENT_TYPES: tuple[str, ...] = (
    "job.completed", "job.failed", "credits.low_balance", "credits.depleted",
    "webhook.test", "webhook.endpoint_disabled",
)
"""Every event type, in the order the docs and the dashboard list them; each has ``<type>.json`` here."""


def _load(event_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(resources.files(__name__).joinpath(f"{event_type}.json").read_text("utf-8"))
    return schema


SCHEMAS: dict[str, dict[str, Any]] = {event_type: _load(event_type) for event_type in EVENT_TYPES}
"""The JSON Schema of each event type's ``data``."""

OPERATIONAL_EVENT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if SCHEMAS[t].get("x-operational"))
"""Ours, about the webhooks themselves; the rest are the customer contract's."""
CONTRACT_EVENT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t not in OPERATIONAL_EVENT_TYPES)

OPERATOR_EVENT_TYPES: tuple[str, ...] = ("endpoint.disabled", "endpoint.recovered", "delivery.exhausted")
"""To the operator, never to a customer: each has ``operator/<type>.json`` here and none is in ``EVENT_TYPES``."""
OPERATOR_SCHEMAS: dict[str, dict[str, Any]] = {t: _load(f"operator/{t}") for t in OPERATOR_EVENT_TYPES}
"""The JSON Schema of each operator event type's ``data``."""
OPERATOR_ORG = "_operator"
"""The org operator events are published in, and so the org whose endpoints receive them. Its data's
``org_id`` is the org the event is about."""
_ALL_SCHEMAS = SCHEMAS | OPERATOR_SCHEMAS

_TYPES = {"string": "a string", "integer": "an integer", "number": "a number", "object": "a JSON object",
          "array": "a JSON array", "boolean": "true or false"}
_TIMESTAMP = "an ISO-8601 timestamp with a UTC offset, e.g. 2024-11-23T10:00:00Z"
# RFC 3339, the date-time of JSON Schema; fromisoformat alone would also take "2024-11-23T10:00Z".
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", re.ASCII)


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    kinds = {"string": str, "object": Mapping, "array": list | tuple, "boolean": bool, "null": type(None)}
    return isinstance(value, kinds[name])


def _is_timestamp(value: str) -> bool:
    if not _RFC3339.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:  # 2024-02-30 and the like
        return False
    return True


def _expected(node: Mapping[str, Any]) -> str:
    if "const" in node:
        return f"the string {node['const']!r}"
    if node.get("format") == "date-time":
        return _TIMESTAMP
    types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    return " or ".join(_TYPES[t] for t in types if t != "null")


def _matches(value: Any, node: Mapping[str, Any]) -> bool:
    if "const" in node:
        return bool(value == node["const"])
    types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    if not any(_is_type(value, t) for t in types):
        return False
    return not (node.get("format") == "date-time" and isinstance(value, str) and not _is_timestamp(value))


def _check_object(event_type: str, where: str, data: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    required = set(schema.get("required", ()))
    for name, node in schema.get("properties", {}).items():
        value = data.get(name)
        if value is None and name in required:
            raise InvalidPayload(f"{event_type}: {where}{name} is required ({_expected(node)})")
        if name not in data:
            continue
        if not _matches(value, node):
            raise InvalidPayload(f"{event_type}: {where}{name} must be {_expected(node)}, got {value!r:.80}")
        if "properties" in node and value is not None:
            _check_object(event_type, f"{where}{name}.", value, node)


def validate(event_type: str, data: Any, org_id: str) -> None:
    """Raise if ``data`` is not a valid payload for ``event_type`` in ``org_id``."""
    if event_type not in _ALL_SCHEMAS:
        raise UnknownEventType(
            f"unknown event type {event_type!r}; known types are: {', '.join(EVENT_TYPES)}"
        )
    if not isinstance(data, Mapping):
        raise InvalidPayload(f"{event_type}: data must be a JSON object (a dict), got {type(data).__name__}")
    _check_object(event_type, "", data, _ALL_SCHEMAS[event_type])
    # An operator event is the operator's, about a customer's org.
    if "org_id" in data and data["org_id"] != org_id and event_type not in OPERATOR_SCHEMAS:
        raise InvalidPayload(
            f"{event_type}: data.org_id is {data['org_id']!r} but the event is published for org "
            f"{org_id!r}; they must be the same"
        )
