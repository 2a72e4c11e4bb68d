"""The webhooks HTTP API (``deliverer api``): endpoints, test events, logs, replay, polling.

Every request but the OpenAPI document needs ``Authorization: Bearer sk_…``;
the key decides the org, and anything of another org answers 404 exactly like
something that does not exist. Every error is JSON
``{"error": {"code", "message", "field"?}}``; no request yields a stack trace.
Delivery state, logs and history are read from the append-only log.
"""

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
import structlog
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from deliverer.api import dashboard
from deliverer.delivery.worker import Worker, default_worker_id
from deliverer.history import logs as history
from deliverer.history import ping, replay
from deliverer.ops.metrics import METRICS
from deliverer.ops.probes import Heartbeat
from deliverer.registry import apikeys, endpoints
from deliverer.registry.endpoints import EndpointError
from deliverer.registry.queries import QUERIES
from deliverer.settings import Settings
from deliverer.storage import connections
from outbox.catalog import EVENT_TYPES
from outbox.ids import parse_delivery_id, parse_event_id

log = structlog.get_logger("deliverer.api")

MAX_BODY_BYTES = 64 * 1024
MAX_PAGE = 100
OUTCOMES = ("succeeded", "failed", "unknown")
POOL_SIZE = 10  # database connections per API process, plus one for recording test events

POOL: web.AppKey[AsyncConnectionPool] = web.AppKey("pool", AsyncConnectionPool)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
SENDER: web.AppKey[Worker] = web.AppKey("sender", Worker)
ORG: web.RequestKey[str] = web.RequestKey("org_id", str)
KEY_ID: web.RequestKey[str] = web.RequestKey("key_id", str)


class Health:
    """What the probe server reports for the API process."""

    def __init__(self) -> None:
        self.heartbeat = Heartbeat()
        self.ready = False


HEALTH: web.AppKey[Health] = web.AppKey("health", Health)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what} with that id in this org")


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type"}


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "payload_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        response = error_response(405, "method_not_allowed",
                                  f"{request.method} is not allowed here; allowed: {', '.join(allowed)}")
        response.headers["Allow"] = ",".join(allowed)
        return response
    except web.HTTPNotFound:
        return error_response(404, "not_found", f"no route {request.method} {request.path}; see /v1/openapi.json")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)
    except psycopg.OperationalError:
        log.warning("database unavailable", path=request.path)
        return error_response(503, "database_unavailable", "the database is unavailable; try again shortly")
    except Exception:
        log.exception("unexpected error", path=request.path, method=request.method)
        return error_response(500, "internal_error", "something went wrong on our side; it has been logged")


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests by route template (never the raw path: ids would make unbounded labels)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    response = await handler(request)
    METRICS.api_requests.labels(route, request.method, f"{response.status // 100}xx").inc()
    METRICS.api_duration.labels(route).observe(time.perf_counter() - started)
    request.app[HEALTH].ready = response.status != 503
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/v1/openapi.json" or not request.path.startswith("/v1/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "missing API key: send the header Authorization: Bearer sk_live_…")
    async with request.app[POOL].connection() as conn:
        found = await apikeys.authenticate(conn, key.strip())
    if found is None:
        raise ApiError(401, "unauthorized", "the API key is not valid; create one with `deliverer keys create`")
    request[ORG], request[KEY_ID] = found.org_id, found.key_id
    with structlog.contextvars.bound_contextvars(org_id=found.org_id):
        return await handler(request)


# Request parsing ---------------------------------------------------------------


async def _json_object(request: web.Request, allowed: set[str]) -> dict[str, Any]:
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


def _typed(body: dict[str, Any], name: str, kind: type | tuple[type, ...], label: str, *,
           required: bool = False) -> Any:
    if name not in body:
        if required:
            raise ApiError(422, "invalid_request", f"{name} is required ({label})", name)
        return None
    value = body[name]  # an explicit null is a wrong type, not an absent field
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ApiError(422, "invalid_request", f"{name} must be {label}", name)
    return value


def _event_list(body: dict[str, Any]) -> list[str] | None:
    events = _typed(body, "events", list, 'a list of event types, or ["*"] for all')
    if events is not None and not all(isinstance(e, str) for e in events):
        raise ApiError(422, "invalid_request", "events must be a list of strings", "events")
    return events


def _timestamp(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be an ISO-8601 timestamp, e.g. 2024-11-23T10:00:00Z",
                       name) from None
    if parsed.tzinfo is None:
        raise ApiError(422, "invalid_request", f"{name} needs a UTC offset, e.g. 2024-11-23T10:00:00Z", name)
    return parsed


def _query_timestamp(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    return None if value is None else _timestamp(value, name)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(422, "invalid_request", f"limit must be a whole number from 1 to {MAX_PAGE}", "limit")
    return int(raw)


def _event_type_filter(value: str | None, name: str) -> str | None:
    if value is not None and value not in EVENT_TYPES:
        raise ApiError(422, "invalid_request", f"{name} must be one of {', '.join(EVENT_TYPES)}", name)
    return value


def _endpoint_error(exc: EndpointError) -> ApiError:
    return ApiError(422, "invalid_request", str(exc), exc.field)


def _parse_id(parse: Callable[[str], uuid.UUID], raw: str, what: str) -> uuid.UUID:
    try:
        return parse(raw)
    except ValueError:
        raise _not_found(what) from None


# Handlers ---------------------------------------------------------------------


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def create_webhook(request: web.Request) -> web.Response:
    body = await _json_object(request, {"url", "events", "description"})
    url = _typed(body, "url", str, "an https:// URL", required=True)
    events = _event_list(body)
    description = _typed(body, "description", str, "a string") or ""
    async with request.app[POOL].connection() as conn:
        try:
            endpoint = await endpoints.add_async(
                conn, org_id=request[ORG], url=url, event_types=events, description=description,
                allow_insecure=request.app[SETTINGS].allow_insecure_urls, allowed=request.app[SETTINGS].networks)
        except EndpointError as exc:
            raise _endpoint_error(exc) from None
    return web.json_response(_endpoint_json(endpoint), status=201)


def _endpoint_json(endpoint: endpoints.Endpoint) -> dict[str, Any]:
    out = endpoint.as_json()
    out.pop("org_id")
    return out


async def list_webhooks(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        items = await endpoints.list_async(conn, request[ORG])
    return web.json_response({"data": [_endpoint_json(e) for e in items]})


async def _own_endpoint(request: web.Request, conn: psycopg.AsyncConnection[Any]) -> endpoints.Endpoint:
    endpoint = await endpoints.get(conn, request.match_info["webhook_id"], request[ORG])
    if endpoint is None:
        raise _not_found("webhook")
    return endpoint


async def get_webhook(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        return web.json_response(_endpoint_json(await _own_endpoint(request, conn)))


async def update_webhook(request: web.Request) -> web.Response:
    body = await _json_object(request, {"url", "events", "description", "enabled"})
    changes: dict[str, Any] = {
        "url": _typed(body, "url", str, "an https:// URL"),
        "description": _typed(body, "description", str, "a string"),
        "enabled": _typed(body, "enabled", bool, "true or false"),
    }
    if "events" in body:
        changes["event_types"] = _event_list(body)
    async with request.app[POOL].connection() as conn:
        try:
            endpoint = await endpoints.update(conn, request.match_info["webhook_id"], request[ORG],
                                              allow_insecure=request.app[SETTINGS].allow_insecure_urls,
                                              allowed=request.app[SETTINGS].networks, **changes)
        except EndpointError as exc:
            raise _endpoint_error(exc) from None
    if endpoint is None:
        raise _not_found("webhook")
    return web.json_response(_endpoint_json(endpoint))


async def delete_webhook(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        if not await endpoints.delete(conn, request.match_info["webhook_id"], request[ORG]):
            raise _not_found("webhook")
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        endpoint = await endpoints.rotate_secret(conn, request.match_info["webhook_id"], request[ORG])
    if endpoint is None:
        raise _not_found("webhook")
    return web.json_response(_endpoint_json(endpoint))


async def send_test_event(request: web.Request) -> web.Response:
    body = await _json_object(request, {"webhook_url", "webhook_id"})
    url = _typed(body, "webhook_url", str, "the URL of a registered webhook")
    webhook_id = _typed(body, "webhook_id", str, "a webhook id")
    if (url is None) == (webhook_id is None):
        raise ApiError(422, "invalid_request", "send exactly one of webhook_url or webhook_id", "webhook_url")
    async with request.app[POOL].connection() as conn:
        if url is not None:
            cur = await conn.execute(QUERIES["find_endpoint_by_url"], {"org_id": request[ORG], "url": url})
        else:
            cur = await conn.execute(QUERIES["endpoint_for_test"], {"org_id": request[ORG], "id": webhook_id})
        endpoint = await cur.fetchone()
        if endpoint is None and url is not None:
            raise ApiError(422, "webhook_not_registered",
                           f"{url} is not a registered webhook of this org; register it first with POST /v1/webhooks",
                           "webhook_url")
        if endpoint is None:
            raise _not_found("webhook")
        try:
            outcome = await ping.send(conn, request.app[SENDER], endpoint)
        except ping.EndpointDisabled as exc:
            raise ApiError(409, "webhook_disabled", str(exc)) from None
    return web.json_response(outcome)


async def webhook_logs(request: web.Request) -> web.Response:
    query = request.query
    unknown = sorted(set(query) - {"event_type", "outcome", "since", "until", "limit", "cursor"})
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown query parameter {unknown[0]!r}", unknown[0])
    outcome = query.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise ApiError(422, "invalid_request", f"outcome must be one of {', '.join(OUTCOMES)}", "outcome")
    async with request.app[POOL].connection() as conn:
        endpoint = await _own_endpoint(request, conn)
        try:
            items, cursor = await history.attempts(
                conn, org_id=request[ORG], endpoint_id=endpoint.id,
                event_type=_event_type_filter(query.get("event_type"), "event_type"), outcome=outcome,
                since=_query_timestamp(request, "since"), until=_query_timestamp(request, "until"),
                cursor=query.get("cursor"), limit=_limit(request))
        except history.BadCursor as exc:
            raise ApiError(422, "invalid_request", str(exc), "cursor") from None
    return web.json_response({"data": items, "next_cursor": cursor})


async def recover_webhook(request: web.Request) -> web.Response:
    body = await _json_object(request, {"since", "until", "dry_run"})
    since = _timestamp(_typed(body, "since", str, "an ISO-8601 timestamp", required=True), "since")
    until_raw = _typed(body, "until", str, "an ISO-8601 timestamp")
    until = _timestamp(until_raw, "until") if until_raw is not None else datetime.now(UTC) + timedelta(seconds=1)
    if until <= since:
        raise ApiError(422, "invalid_request", "until must be later than since", "until")
    dry_run = bool(_typed(body, "dry_run", bool, "true or false"))
    async with request.app[POOL].connection() as conn:
        endpoint = await _own_endpoint(request, conn)
        ids = await replay.recover(conn, endpoint.id, org_id=request[ORG], since=since, until=until,
                                   actor=f"api:{request[KEY_ID]}", dry_run=dry_run)
    return web.json_response({
        "dry_run": dry_run, "count": len(ids),
        "delivery_ids": [history.delivery_public_id(i) for i in ids],
    }, status=200 if dry_run else 202)


async def get_delivery(request: web.Request) -> web.Response:
    delivery_id = _parse_id(parse_delivery_id, request.match_info["delivery_id"], "delivery")
    async with request.app[POOL].connection() as conn:
        found = await history.delivery(conn, delivery_id, request[ORG])
    if found is None:
        raise _not_found("delivery")
    return web.json_response(found)


async def replay_delivery(request: web.Request) -> web.Response:
    delivery_id = _parse_id(parse_delivery_id, request.match_info["delivery_id"], "delivery")
    async with request.app[POOL].connection() as conn:
        done = await replay.replay(conn, [delivery_id], org_id=request[ORG], actor=f"api:{request[KEY_ID]}")
        if not done:
            found = await history.delivery(conn, delivery_id, request[ORG])
            if found is None:
                raise _not_found("delivery")
            raise ApiError(409, "delivery_in_progress",
                           f"the delivery is {found['state']}; replay it once it has been delivered or has failed")
        found = await history.delivery(conn, delivery_id, request[ORG])
    return web.json_response(found, status=202)


async def get_event(request: web.Request) -> web.Response:
    event_id = _parse_id(parse_event_id, request.match_info["event_id"], "event")
    async with request.app[POOL].connection() as conn:
        found = await history.event(conn, event_id, request[ORG])
    if found is None:
        raise _not_found("event")
    return web.json_response(found)


async def list_events(request: web.Request) -> web.Response:
    query = request.query
    unknown = sorted(set(query) - {"after", "limit", "types"})
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown query parameter {unknown[0]!r}", unknown[0])
    types = None
    if "types" in query:
        types = [_event_type_filter(t, "types") for t in query["types"].split(",")]
    async with request.app[POOL].connection() as conn:
        try:
            items, cursor = await history.events_after(conn, request[ORG], cursor=query.get("after"),
                                                       event_types=types, limit=_limit(request))
        except history.BadCursor as exc:
            raise ApiError(422, "invalid_request", str(exc), "after") from None
    return web.json_response({"data": items, "next_cursor": cursor})


OPENAPI: dict[str, Any] = json.loads(resources.files(__package__).joinpath("openapi.json").read_text())

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/openapi.json", openapi_document),
    ("POST", "/v1/webhooks", create_webhook),
    ("GET", "/v1/webhooks", list_webhooks),
    ("POST", "/v1/webhooks/test", send_test_event),
    ("GET", "/v1/webhooks/{webhook_id:ep_[A-Za-z0-9]+}", get_webhook),
    ("PATCH", "/v1/webhooks/{webhook_id:ep_[A-Za-z0-9]+}", update_webhook),
    ("DELETE", "/v1/webhooks/{webhook_id:ep_[A-Za-z0-9]+}", delete_webhook),
    ("POST", "/v1/webhooks/{webhook_id:ep_[A-Za-z0-9]+}/rotate-secret", rotate_secret),
    ("GET", "/v1/webhooks/{webhook_id:ep_[A-Za-z0-9]+}/logs", webhook_logs),
    ("POST", "/v1/webhooks/{webhook_id:ep_[A-Za-z0-9]+}/recover", recover_webhook),
    ("GET", "/v1/deliveries/{delivery_id}", get_delivery),
    ("POST", "/v1/deliveries/{delivery_id}/replay", replay_delivery),
    ("GET", "/v1/events", list_events),
    ("GET", "/v1/events/{event_id}", get_event),
]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[measure, errors_as_json, authenticate], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[HEALTH] = Health()
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    dashboard.add_routes(app)

    async def resources_ctx(app: web.Application) -> Any:
        pool = AsyncConnectionPool(settings.database_url, min_size=1, max_size=POOL_SIZE, open=False,
                                   kwargs=connections.options(settings, "deliverer-api"))
        await pool.open()
        sender = Worker(replace(settings, worker_id=f"api-{default_worker_id()}"))
        beat = asyncio.create_task(app[HEALTH].heartbeat.run())
        async with sender:
            app[POOL], app[SENDER] = pool, sender
            app[HEALTH].ready = True
            yield
        beat.cancel()
        await pool.close()

    app.cleanup_ctx.append(resources_ctx)
    return app
