"""The API's request and response bodies as pydantic models: the OpenAPI document's schemas are
generated from them (``openapi``) and requests are read with them (``validation``).

Request models are strict (a JSON string is not a number, null is not an absent field) and refuse
unknown fields. A field whose *values* the registry judges (an endpoint's URL, events, description
and limits, so the CLI refuses the same input with the same words) is typed loosely here and
documented with the registry's own bounds; ``Label`` says what a field must be, in the words of
the API's error messages.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from deliverer.facts import FactKind, Outcome
from deliverer.registry.endpoints import MAX_DESCRIPTION, MAX_IN_FLIGHT_CEILING, MAX_RATE_LIMIT, MAX_URL_LENGTH
from deliverer.registry.request_options import (
    MAX_CREDENTIAL,
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_HEADERS_TOTAL,
)

REF = "#/components/schemas/{model}"
# The catalog's (see catalog.schemas), or the operator's. Wrapped: pydantic resolves a field's own $ref among
# its models.
EVENT_TYPE_REF = {"anyOf": [{"$ref": REF.format(model="EventType")}, {"$ref": REF.format(model="OperatorEventType")}]}


@dataclass(frozen=True)
class Label:
    """What a request field must be, as its error message says it: ``url must be an https:// URL``."""

    text: str


Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
NullableTimestamp = Annotated[str | None, WithJsonSchema({"type": ["string", "null"], "format": "date-time"})]
_EVENTS_SCHEMA = {"type": "array", "items": {"anyOf": [EVENT_TYPE_REF, {"const": "*"}]},
                  "description": '["*"] means every event type, including ones added later'}
Events = Annotated[list[str], WithJsonSchema(_EVENTS_SCHEMA), Label('a list of event types, or ["*"] for all')]
Url = Annotated[str, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_URL_LENGTH, "format": "uri",
                                     "description": "https:// URL of a public host"}), Label("an https:// URL")]
Description = Annotated[str, WithJsonSchema({"type": "string", "maxLength": MAX_DESCRIPTION}), Label("a string")]
_MAX_IN_FLIGHT = {
    "type": ["integer", "null"], "minimum": 1, "maximum": MAX_IN_FLIGHT_CEILING,
    "description": f"Most requests open to this endpoint at once, across every deliverer process (1 to "
                   f"{MAX_IN_FLIGHT_CEILING}); null: the deployment's default, DELIVERER_ENDPOINT_MAX_IN_FLIGHT (50 "
                   "unless set). The deliverer adapts below it: it starts small, grows with successes and halves "
                   "on timeouts, 429 and 503",
}
_RATE_LIMIT = {
    "type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_RATE_LIMIT,
    "description": f"Most deliveries a second to this endpoint, across every deliverer process (above 0, at most "
                   f"{MAX_RATE_LIMIT:g}; fractions allowed, e.g. 0.5); null: the deployment's default, "
                   "DELIVERER_ENDPOINT_RATE_LIMIT (none unless set)",
}
_ORDERING = {
    "type": "string", "enum": ["none", "fifo"],
    "description": "fifo: deliveries are sent one at a time per ordering key (given at publish; events without one "
                   "share a key), in publish order: the next starts once the one before is delivered or has failed "
                   "for good. Applies to deliveries published while it is set. none: sent as they come, in parallel",
}
# Any: registry.endpoints.check_max_in_flight, check_rate_limit and check_ordering judge the value, for the CLI too.
MaxInFlight = Annotated[Any, WithJsonSchema(_MAX_IN_FLIGHT)]
RateLimit = Annotated[Any, WithJsonSchema(_RATE_LIMIT)]
Ordering = Annotated[Any, WithJsonSchema(_ORDERING)]
Enabled = Annotated[bool, Label("true or false")]
_HEADERS = {
    "type": ["object", "null"], "maxProperties": MAX_HEADERS,
    "propertyNames": {"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", "maxLength": MAX_HEADER_NAME},
    "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_VALUE},
    "description": f"Headers sent with every request to this endpoint, name to value (at most {MAX_HEADERS}, "
                   f"{MAX_HEADERS_TOTAL} characters in all). Reserved, refused: Authorization (use auth), "
                   "Content-Type, Content-Length, Host, User-Agent, traceparent, tracestate, the connection's "
                   "own headers, X-DocExtract-* and webhook-*. Values are sealed at rest and never returned: "
                   "responses list the names (header_names). On update the object replaces every header; null "
                   "or {} removes them",
}
_SECRET_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_CREDENTIAL}
_PEM = {"type": "string", "minLength": 1, "description": "PEM"}
_AUTH = {
    "description": "How the deliverer authenticates to the endpoint. The credentials are sealed at rest and never "
                   "returned: responses show only the type. A client certificate must match its key and be valid "
                   "now, or it is refused. On update the object replaces the auth; null removes it",
    "oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["type", "username", "password"],
         "properties": {"type": {"const": "basic"}, "username": _SECRET_TEXT | {"pattern": "^[^:]*$"},
                        "password": {"type": "string", "maxLength": MAX_CREDENTIAL}}},
        {"type": "object", "additionalProperties": False, "required": ["type", "token"],
         "properties": {"type": {"const": "bearer"}, "token": _SECRET_TEXT | {"pattern": "^[^ ]+$"}}},
        {"type": "object", "additionalProperties": False, "required": ["type", "certificate", "key"],
         "description": "mutual TLS: the client certificate (then any intermediates) and its unencrypted key",
         "properties": {"type": {"const": "mtls"}, "certificate": _PEM, "key": _PEM}},
        {"type": "null"},
    ],
}
# Any: registry.request_options judges the value, for the CLI too.
Headers = Annotated[Any, WithJsonSchema(_HEADERS)]
Auth = Annotated[Any, WithJsonSchema(_AUTH)]


def _no_default(schema: dict[str, Any]) -> None:
    """For a field whose absence means something (unchanged, not sent): no default to document."""
    schema.pop("default", None)


def absent(default: Any) -> Any:
    """The field's default in Python, left out of the schema."""
    return Field(default, json_schema_extra=_no_default)


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Errors ------------------------------------------------------------------------


class ErrorBody(Response):
    code: str
    message: str
    field: Annotated[str | None, WithJsonSchema({"type": "string"})] = absent(None)


class Error(Response):
    error: ErrorBody


# Webhooks ----------------------------------------------------------------------


class WebhookCreate(Request):
    url: Url
    events: Events = ["*"]
    description: Description = ""
    max_in_flight: MaxInFlight = None
    rate_limit: RateLimit = None
    headers: Headers = None
    auth: Auth = None
    ordering: Ordering = "none"

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "url": "https://your-domain.com/webhooks/docextract", "events": ["job.completed", "job.failed"],
        "description": "production", "max_in_flight": 10, "rate_limit": 25,
        "headers": {"X-Tenant": "acme"}, "auth": {"type": "bearer", "token": "s3cr3t-token"}}]})


class WebhookUpdate(Request):
    """Only the fields sent change; null puts a limit back on the deployment's default."""

    url: Url = absent("")
    events: Events = absent([])
    description: Description = absent("")
    enabled: Enabled = absent(True)
    max_in_flight: MaxInFlight = absent(None)
    rate_limit: RateLimit = absent(None)
    headers: Headers = absent(None)
    auth: Auth = absent(None)
    ordering: Ordering = absent("none")

    model_config = ConfigDict(json_schema_extra={"examples": [{"max_in_flight": 5, "rate_limit": 2.5},
                                                              {"max_in_flight": None, "rate_limit": None},
                                                              {"auth": {"type": "basic", "username": "docextract",
                                                                        "password": "hunter2"}}]})


class Pacing(Response):
    """Only in GET /v1/webhooks/{webhook_id}: the live state of the endpoint's limits, shared by every deliverer
    process and changing from one request to the next; zeros and null before anything has been sent to it."""

    in_flight: int = Field(ge=0, description="Requests open to the endpoint now")
    allowance: int = Field(ge=0, description="Requests it may have open at once now: grows by one per success up "
                                             "to max_in_flight, halves on a timeout, connection error, 429 or 503")
    paused_until: NullableTimestamp = Field(
        description="Nothing is sent before this time: the endpoint asked for a pause with Retry-After")


class WebhookAuth(Response):
    type: Literal["basic", "bearer", "mtls"]


class Webhook(Response):
    id: str = Field(pattern="^ep_")
    url: str
    events: Annotated[list[str], WithJsonSchema(_EVENTS_SCHEMA)]
    description: str
    enabled: bool
    created_at: Timestamp
    updated_at: Timestamp
    disabled_reason: str | None = Field(
        description="Why the endpoint was disabled automatically: the receiver answered 410 Gone, or every attempt "
                    "failed for DELIVERER_DISABLE_AFTER")
    max_in_flight: Annotated[int | None, WithJsonSchema(_MAX_IN_FLIGHT)]
    rate_limit: Annotated[float | None, WithJsonSchema(_RATE_LIMIT)]
    header_names: list[str] = Field(description="The names of the endpoint's custom headers; their values are "
                                                "never returned")
    auth: WebhookAuth | None = Field(description="That the endpoint has auth, and its type; the credentials are "
                                                 "never returned")
    ordering: Annotated[Literal["none", "fifo"], WithJsonSchema(_ORDERING)]
    secret: Annotated[str | None, WithJsonSchema({
        "type": "string", "description": "Only in the responses of create and rotate-secret"})] = absent(None)
    pacing: Pacing | None = absent(None)

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "ep_3f2a9c1d7e5b4a6c8d0e1f2a", "url": "https://your-domain.com/webhooks/docextract",
        "events": ["job.completed", "job.failed"], "description": "production", "enabled": True,
        "disabled_reason": None, "created_at": "2024-11-23T10:00:00Z", "updated_at": "2024-11-23T10:05:00Z",
        "max_in_flight": 10, "rate_limit": 25.0, "header_names": ["X-Tenant"], "auth": {"type": "bearer"},
        "ordering": "none", "pacing": {"in_flight": 3, "allowance": 10, "paused_until": None}}]})


class WebhookList(Response):
    data: list[Webhook]
    operator: bool = Field(description="The org is the operator's: its endpoints may also subscribe to the "
                                       "operator event types (x-operator-webhooks)")


class TestRequest(Request):
    """Exactly one of webhook_url or webhook_id."""

    webhook_url: Annotated[str, Field(min_length=1), Label("the URL of a registered webhook")] = absent("")
    webhook_id: Annotated[str, Field(min_length=1), Label("a webhook id")] = absent("")

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["webhook_url"]},
                                                           {"required": ["webhook_id"]}]})


class TestResult(Response):
    delivered: bool
    webhook_id: str
    webhook_url: str
    event_id: str = Field(pattern="^evt_")
    delivery_id: str = Field(pattern="^dlv_")
    http_status: int | None
    response_time_ms: float
    error_class: str | None
    error_message: str | None


# Logs and recovery -------------------------------------------------------------


class Attempt(Response):
    id: str
    timestamp: Timestamp
    event_type: Annotated[str, WithJsonSchema(EVENT_TYPE_REF)]
    event_id: str
    delivery_id: str
    endpoint_id: str
    series: int
    attempt: int = Field(description="Retry attempt number within the series")
    kind: Literal[FactKind.ATTEMPT_FINISHED, FactKind.ATTEMPT_ABANDONED, FactKind.LATE_RESULT]
    outcome: Outcome
    http_status: int | None
    response_time_ms: float | None
    error_class: str | None
    error_message: str | None
    next_attempt_at: NullableTimestamp


class AttemptPage(Response):
    data: list[Attempt]
    next_cursor: str | None


class RecoverRequest(Request):
    since: Annotated[Timestamp, Label("an ISO-8601 timestamp")]
    until: Annotated[Timestamp, Label("an ISO-8601 timestamp")] = absent("")
    dry_run: Enabled = False


class RecoverResult(Response):
    dry_run: bool
    count: int
    delivery_ids: list[str]


# Deliveries and events ---------------------------------------------------------

DeliveryState = Literal["pending", "in_flight", "retrying", "delivered", "failed"]


class HistoryEntry(Response):
    seq: int
    recorded_at: Timestamp
    kind: FactKind
    series: int
    attempt: int
    outcome: Outcome | None
    started_at: NullableTimestamp
    response_time_ms: float | None
    http_status: int | None
    error_class: str | None
    error_message: str | None
    response_excerpt: str | None
    next_attempt_at: NullableTimestamp
    worker_id: str | None
    actor: str | None


class Delivery(Response):
    id: str = Field(pattern="^dlv_")
    event_id: str
    event_type: Annotated[str, WithJsonSchema(EVENT_TYPE_REF)]
    endpoint_id: str
    state: DeliveryState
    series: int
    attempts: int
    next_attempt_at: NullableTimestamp
    lease_expires_at: NullableTimestamp
    updated_at: Timestamp
    event_created_at: Timestamp
    history: list[HistoryEntry]


class EventDelivery(Response):
    id: str
    endpoint_id: str
    state: DeliveryState
    series: int
    attempts: int
    updated_at: Timestamp


class EventSummary(Response):
    id: str = Field(pattern="^evt_")
    type: Annotated[str, WithJsonSchema(EVENT_TYPE_REF)]
    data: dict[str, Any]
    created_at: Timestamp


class Event(EventSummary):
    deliveries: list[EventDelivery]


class EventPage(Response):
    data: list[EventSummary]
    next_cursor: str = Field(description="Pass as `after` to continue; returned even when data is empty")


REQUESTS: tuple[type[Request], ...] = (WebhookCreate, WebhookUpdate, TestRequest, RecoverRequest)
RESPONSES: tuple[type[Response], ...] = (
    Error, Webhook, WebhookAuth, WebhookList, TestResult, Attempt, AttemptPage, RecoverResult, HistoryEntry, Delivery,
    EventDelivery, Event, EventSummary, EventPage,
)
