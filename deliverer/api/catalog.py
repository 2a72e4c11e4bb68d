"""The event catalog as OpenAPI 3.1: each event type's payload schema, its envelope and a
``webhooks`` entry saying what the deliverer POSTs to a receiver, from ``outbox.catalog``
(the schemas publish validates with), so customers generate receiver types from the contract.

The operator event types are not the customer's: ``webhooks`` and the events page leave them
out, and the document describes them apart, in ``x-operator-webhooks`` (the same shape), with
their schemas beside the others under ``components.schemas``.
"""

import json
from typing import Any

from outbox.catalog import EVENT_TYPES, OPERATOR_EVENT_TYPES, OPERATOR_ORG, OPERATOR_SCHEMAS, SCHEMAS

_REF = "#/components/schemas/"

# What every webhook request carries besides its body (deliverer.delivery.sign writes them;
# tests/unit/test_catalog.py checks the two agree).
HEADERS: dict[str, str] = {
    "X-DocExtract-Signature": "Hex HMAC-SHA256 of the raw body with the endpoint's secret",
    "X-DocExtract-Event-Id": "The event's id (evt_…), the same on every attempt and replay: deduplicate on it",
    "X-DocExtract-Event-Type": "The event type, as in the body's `event`",
    "X-DocExtract-Delivery-Id": "This delivery's id (dlv_…): one event to one endpoint",
    "X-DocExtract-Delivery-Attempt": "The attempt number within the delivery, from 1",
    "X-DocExtract-Timestamp": "When the attempt started, Unix seconds",
    "webhook-id": "Standard Webhooks: the event's id",
    "webhook-timestamp": "Standard Webhooks: when the attempt started, Unix seconds (signed)",
    "webhook-signature": "Standard Webhooks: `v1,<base64 HMAC>` for each secret in use, separated by spaces",
    "User-Agent": "`DocExtract-Webhooks/<version>`",
}


_ALL = SCHEMAS | OPERATOR_SCHEMAS


def _name(event_type: str) -> str:
    """The schema's title without ``Data``: ``job.completed`` is JobCompleted."""
    title: str = _ALL[event_type]["title"]
    return title.removesuffix("Data")


def schemas() -> dict[str, Any]:
    """components.schemas entries: EventType and OperatorEventType, and for each type its data (``…Data``)
    and its body (``…Event``)."""
    out: dict[str, Any] = {
        "EventType": {"type": "string", "enum": list(EVENT_TYPES),
                      "description": "An event type of the catalog (see `webhooks`)"},
        "OperatorEventType": {"type": "string", "enum": list(OPERATOR_EVENT_TYPES),
                              "description": "An operator event type (see `x-operator-webhooks`): only endpoints "
                                             f"of the operator org, {OPERATOR_ORG}, receive them"},
    }
    for event_type in (*EVENT_TYPES, *OPERATOR_EVENT_TYPES):
        data = {k: v for k, v in _ALL[event_type].items() if k not in ("$schema", "$id")}
        out[data["title"]] = data
        out[_name(event_type) + "Event"] = {
            "type": "object", "title": _name(event_type) + "Event", "required": ["event", "data"],
            "additionalProperties": False, "description": f"The body of a {event_type} webhook request",
            "properties": {"event": {"const": event_type}, "data": {"$ref": _REF + data["title"]}},
        }
    return out


def webhooks() -> dict[str, Any]:
    """The OpenAPI 3.1 ``webhooks`` section: one POST per event type, as receivers get it."""
    return _posts(EVENT_TYPES)


def operator_webhooks() -> dict[str, Any]:
    """``x-operator-webhooks``: the same for the operator event types, which are not the customer contract."""
    return _posts(OPERATOR_EVENT_TYPES)


def _tag(event_type: str) -> str:
    if event_type in OPERATOR_SCHEMAS:
        return "operator"
    return "operational" if SCHEMAS[event_type].get("x-operational") else "events"


def _posts(event_types: tuple[str, ...]) -> dict[str, Any]:
    parameters = [{"name": name, "in": "header", "required": True, "description": text, "schema": {"type": "string"}}
                  for name, text in HEADERS.items()]
    return {event_type: {"post": {
        "summary": _ALL[event_type]["description"],
        "operationId": _name(event_type)[0].lower() + _name(event_type)[1:],
        "tags": [_tag(event_type)],
        "parameters": parameters,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": _REF + _name(event_type) + "Event"}}}},
        "responses": {
            "2XX": {"description": "Received: the delivery is done. Answer within the timeout (5 s by default)"},
            "410": {"description": "Gone: the endpoint is disabled and nothing more is sent to it"},
            "default": {"description": "Anything else, or no answer in time: retried on the schedule"},
        },
    }} for event_type in event_types}


def _type(node: dict[str, Any]) -> str:
    if "const" in node:
        return f"`{node['const']!r}`".replace("'", '"')
    types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    text = " or ".join("null" if t == "null" else t for t in types)
    return text + (" (date-time)" if node.get("format") == "date-time" else "")


def _rows(node: dict[str, Any], prefix: str = "") -> list[str]:
    rows = []
    for name, child in node["properties"].items():
        required = "yes" if name in node.get("required", ()) else "no"
        rows.append(f"| `{prefix}{name}` | {_type(child)} | {required} | {child.get('description', '')} |")
        if "properties" in child:
            rows.extend(_rows(child, f"{prefix}{name}."))
    return rows


def markdown() -> str:
    """docs/events.md: the catalog for people, from the same schemas (tests/unit/test_catalog.py checks it)."""
    lines = [
        "# Events",
        "",
        "<!-- Generated from outbox/catalog/*.json by `python -m deliverer.api.catalog > docs/events.md`;",
        "     a test fails when this file and the schemas differ. -->",
        "",
        "Every webhook request is a `POST` whose JSON body is `{\"event\": <type>, \"data\": {...}}`. The shape",
        "of `data` for each type is a JSON Schema in `outbox/catalog/`: producers are held to it when they",
        "publish (a step stricter than JSON Schema: an `integer` is written as one, so `2.0` is refused, and",
        "timestamps use an upper-case `T` and `Z`, as receivers in typed languages expect), and receivers",
        "can generate types from it. `GET /v1/openapi.json` carries the same schemas",
        "under `components.schemas` and one entry per event type in its OpenAPI 3.1 `webhooks` section, e.g.:",
        "",
        "```sh",
        "curl -s http://localhost:8080/v1/openapi.json > openapi.json",
        "datamodel-codegen --input openapi.json --input-file-type openapi --output receiver_models.py",
        "```",
        "",
        "then `receiver_models.JobCompletedEvent.model_validate_json(body)` in a Python receiver.",
        "",
        "Fields not listed may be added later: receivers should ignore what they do not know.",
        "A `null` optional field is the same as an absent one.",
        "",
        "## Headers",
        "",
        "| Header | Meaning |",
        "|---|---|",
        *(f"| `{name}` | {text} |" for name, text in HEADERS.items()),
        "",
        "Answer 2xx within the timeout for the delivery to count; 410 Gone disables the endpoint; anything",
        "else is retried on the schedule.",
    ]
    for event_type in EVENT_TYPES:
        schema = SCHEMAS[event_type]
        lines += [
            "", f"## {event_type}", "", schema["description"], "",
            "| Field | Type | Required | Meaning |", "|---|---|---|---|", *_rows(schema), "",
            "```json", json.dumps({"event": event_type, "data": schema["examples"][0]}, indent=2), "```",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
