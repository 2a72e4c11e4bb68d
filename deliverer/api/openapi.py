"""The OpenAPI 3.1 document ``GET /v1/openapi.json`` serves, built rather than written: the
schemas from the pydantic models (``models``) and the event catalog (``catalog``), the paths
from the table below, whose operations a test holds to the app's route table.

``python -m deliverer.api.openapi`` prints it, for client generators and the docs.
"""

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from deliverer import __version__
from deliverer.api import catalog, models
from deliverer.api.validation import DEFAULT_PAGE, MAX_PAGE
from deliverer.facts import Outcome
from outbox.catalog import EVENT_TYPES, OPERATOR_EVENT_TYPES

_ERRORS = {
    400: "Malformed JSON", 401: "Missing or invalid API key", 404: "No such resource in this org",
    413: "Body too large", 422: "Invalid field; `field` names it", 503: "Database unavailable",
}
_BODY_ERRORS = (400, 413, 422)


class _Schemas(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # "Url" for url says nothing; the models' titles stay


def _ref(name: str) -> dict[str, str]:
    return {"$ref": models.REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(operation_id: str, summary: str, ok: dict[int, tuple[str, str | None]], *,
               body: type[models.Request] | None = None, errors: tuple[int, ...] = (),
               params: tuple[dict[str, Any], ...] = (), error_texts: dict[int, str] | None = None) -> dict[str, Any]:
    """``ok``: each success status with its description and response model (None: no body)."""
    texts = _ERRORS | (error_texts or {})
    responses: dict[str, Any] = {
        str(status): _json(_ref(model), text) if model else {"description": text}
        for status, (text, model) in ok.items()}
    for status in (*((*_BODY_ERRORS, *errors) if body else errors), 401, 503):
        responses[str(status)] = _json(_ref("Error"), texts[status])
    out: dict[str, Any] = {"summary": summary, "operationId": operation_id, "responses": responses}
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body.__name__)}}}
    if params:
        out["parameters"] = list(params)
    return out


def _path(name: str, prefix: str, pattern: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern},
            "description": f"{name.split('_')[0].capitalize()} id ({prefix}_…)"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_WEBHOOK_ID = _path("webhook_id", "ep", "^ep_[A-Za-z0-9]+$")
_DELIVERY_ID = _path("delivery_id", "dlv", "^dlv_[0-9a-f]{32}$")
_EVENT_ID = _path("event_id", "evt", "^evt_[0-9a-f]{32}$")
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}, "Page size")
_ANY_TYPE = "(" + "|".join(t.replace(".", r"\.") for t in (*EVENT_TYPES, *OPERATOR_EVENT_TYPES)) + ")"


def paths() -> dict[str, Any]:
    webhook = "/v1/webhooks/{webhook_id}"
    delivery = "/v1/deliveries/{delivery_id}"
    return {
        "/v1/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi", "security": [],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")}}},
        "/v1/webhooks": {
            "post": _operation("createWebhook",
                               "Register a webhook endpoint; the response carries its secret, shown only here",
                               {201: ("Created", "Webhook")}, body=models.WebhookCreate),
            "get": _operation("listWebhooks", "List the org's webhook endpoints", {200: ("Endpoints", "WebhookList")}),
        },
        "/v1/webhooks/test": {"post": _operation(
            "sendTestEvent", "Send the webhook.test event to a registered endpoint now and report the outcome",
            {200: ("Outcome of the attempt (delivered or not)", "TestResult")}, body=models.TestRequest,
            errors=(404, 409), error_texts={409: "Endpoint disabled"})},
        webhook: {
            "get": _operation("getWebhook", "One endpoint, with the live pacing of its limits",
                              {200: ("Endpoint", "Webhook")}, errors=(404,), params=(_WEBHOOK_ID,)),
            "patch": _operation("updateWebhook",
                                "Change url, events, description, enabled, max_in_flight, rate_limit, headers, "
                                "auth or ordering",
                                {200: ("Endpoint", "Webhook")}, body=models.WebhookUpdate, errors=(404,),
                                params=(_WEBHOOK_ID,)),
            "delete": _operation("deleteWebhook", "Delete an endpoint; it receives nothing more",
                                 {204: ("Deleted", None)}, errors=(404,), params=(_WEBHOOK_ID,)),
        },
        webhook + "/rotate-secret": {"post": _operation(
            "rotateWebhookSecret", "Replace the signing secret; the response carries the new one",
            {200: ("Endpoint with its new secret", "Webhook")}, errors=(404,), params=(_WEBHOOK_ID,))},
        webhook + "/logs": {"get": _operation(
            "webhookLogs", "Attempts to this endpoint, newest first", {200: ("A page of attempts", "AttemptPage")},
            errors=(422, 404), error_texts={422: "Invalid filter or cursor"}, params=(
                _WEBHOOK_ID,
                _query("event_type", _ref("EventType"), "Only this event type"),
                _query("outcome", {"type": "string", "enum": list(Outcome)}, "Only this outcome"),
                _query("since", {"type": "string", "format": "date-time"}, "Recorded at or after"),
                _query("until", {"type": "string", "format": "date-time"}, "Recorded before"),
                _LIMIT,
                _query("cursor", {"type": "string"}, "next_cursor of the previous page")))},
        webhook + "/recover": {"post": _operation(
            "recoverWebhook", "Replay this endpoint's failed deliveries of events created in [since, until)",
            {200: ("Dry run: what would be replayed", "RecoverResult"), 202: ("Replayed", "RecoverResult")},
            body=models.RecoverRequest, errors=(404,), params=(_WEBHOOK_ID,))},
        delivery: {"get": _operation(
            "getDelivery", "A delivery's state, derived from its log, and the full log",
            {200: ("Delivery", "Delivery")}, errors=(404,), params=(_DELIVERY_ID,))},
        delivery + "/replay": {"post": _operation(
            "replayDelivery", "Start a new attempt series for a delivered or failed delivery",
            {202: ("Replay scheduled", "Delivery")}, errors=(404, 409),
            error_texts={409: "Still being attempted"}, params=(_DELIVERY_ID,))},
        "/v1/events": {"get": _operation(
            "listEvents", "The org's events in commit order, for polling; never skips a late-committing event",
            {200: ("A page of events", "EventPage")}, errors=(422,), error_texts={422: "Invalid cursor or filter"},
            params=(_query("after", {"type": "string"}, "next_cursor of the previous call"), _LIMIT,
                    _query("types", {"type": "string", "pattern": f"^{_ANY_TYPE}(,{_ANY_TYPE})*$"},
                           "Comma-separated event types")))},
        "/v1/events/{event_id}": {"get": _operation(
            "getEvent", "An event and its deliveries", {200: ("Event", "Event")}, errors=(404,),
            params=(_EVENT_ID,))},
    }


def schemas() -> dict[str, Any]:
    """components.schemas: the API's models, then the event catalog's."""
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in models.REQUESTS), *((m, "serialization") for m in models.RESPONSES)]
    _, top = models_json_schema(inputs, ref_template=models.REF, schema_generator=_Schemas)
    return dict(top["$defs"]) | catalog.schemas()


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "DocExtract webhooks API", "version": __version__, "description": (
            "Manage webhook endpoints, send test events, read delivery logs, replay and poll events. "
            'Every error is {"error": {"code", "message", "field"?}}. `webhooks` lists the events '
            "the deliverer POSTs to receivers, with their payload schemas.")},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths(),
        "webhooks": catalog.webhooks(),
        "x-operator-webhooks": catalog.operator_webhooks(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An org's API key, sk_live_… or sk_test_…"}},
            "schemas": schemas(),
        },
    }


if __name__ == "__main__":
    print(json.dumps(document(), indent=2, ensure_ascii=False))
