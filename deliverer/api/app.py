"""The webhooks HTTP API (``deliverer api``): endpoints, test events, logs, replay, polling.

Every request but the OpenAPI document needs ``Authorization: Bearer sk_…``;
the key decides the org, and anything of another org answers 404 exactly like
something that does not exist. Every error is JSON
``{"error": {"code", "message", "field"?}}``; no request yields a stack trace.
Delivery state, logs and history are read from the append-only log.

This module assembles the app: its middlewares (errors as JSON, metrics,
authentication), the route table and the resources it runs with. The handlers
are in ``handlers``, request parsing in ``validation``.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import structlog
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from deliverer.api import dashboard, handlers
from deliverer.api.context import HEALTH, KEY_ID, ORG, POOL, SENDER, SETTINGS, Health
from deliverer.api.errors import ApiError, error_response
from deliverer.api.handlers import OPENAPI
from deliverer.delivery.worker import default_worker_id
from deliverer.history import ping
from deliverer.ops import tracing
from deliverer.ops.metrics import METRICS
from deliverer.registry import apikeys
from deliverer.settings import Settings
from deliverer.storage import connections

__all__ = ["HEALTH", "OPENAPI", "ROUTES", "create_app"]  # OPENAPI: tests check replies against it from here

log = structlog.get_logger("deliverer.api")

MAX_BODY_BYTES = 64 * 1024
POOL_SIZE = 10  # database connections per API process; test events are recorded on them too

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type"}


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except psycopg.OperationalError:
        log.warning("database unavailable", path=request.path)
        return error_response(503, "database_unavailable", "the database is unavailable; try again shortly")
    except Exception:
        log.exception("unexpected error", path=request.path, method=request.method)
        return error_response(500, "internal_error", "something went wrong on our side; it has been logged")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) in the API's error shape."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, "payload_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        response = error_response(405, "method_not_allowed",
                                  f"{request.method} is not allowed here; allowed: {', '.join(allowed)}")
        response.headers["Allow"] = ",".join(allowed)
        return response
    if isinstance(exc, web.HTTPNotFound):
        return error_response(404, "not_found", f"no route {request.method} {request.path}; see /v1/openapi.json")
    return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)


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
async def continue_trace(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request with a ``traceparent`` runs in that trace: the test event it sends continues it."""
    with tracing.continued(request.headers):
        return await handler(request)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/v1/openapi.json" or not request.path.startswith("/v1/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "missing API key: send the header Authorization: Bearer sk_live_…")
    async with request.app[POOL].connection() as conn:
        caller = await apikeys.authenticate(conn, key.strip())
    if caller is None:
        raise ApiError(401, "unauthorized", "the API key is not valid; create one with `deliverer keys create`")
    request[ORG], request[KEY_ID] = caller.org_id, caller.key_id
    with structlog.contextvars.bound_contextvars(org_id=caller.org_id):
        return await handler(request)


_WEBHOOK = "/v1/webhooks/{webhook_id:ep_[A-Za-z0-9]+}"

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/openapi.json", handlers.openapi_document),
    ("POST", "/v1/webhooks", handlers.create_webhook),
    ("GET", "/v1/webhooks", handlers.list_webhooks),
    ("POST", "/v1/webhooks/test", handlers.send_test_event),
    ("GET", _WEBHOOK, handlers.get_webhook),
    ("PATCH", _WEBHOOK, handlers.update_webhook),
    ("DELETE", _WEBHOOK, handlers.delete_webhook),
    ("POST", _WEBHOOK + "/rotate-secret", handlers.rotate_secret),
    ("GET", _WEBHOOK + "/logs", handlers.webhook_logs),
    ("POST", _WEBHOOK + "/recover", handlers.recover_webhook),
    ("GET", "/v1/deliveries/{delivery_id}", handlers.get_delivery),
    ("POST", "/v1/deliveries/{delivery_id}/replay", handlers.replay_delivery),
    ("GET", "/v1/events", handlers.list_events),
    ("GET", "/v1/events/{event_id}", handlers.get_event),
]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[measure, continue_trace, errors_as_json, authenticate],
                          client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[HEALTH] = Health()
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    dashboard.add_routes(app)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(settings.database_url, min_size=1, max_size=POOL_SIZE, open=False,
                                   kwargs=connections.options(settings, "deliverer-api"))
        await pool.open()
        # Test events are sent by a worker of their own, under a name that says it is the API's.
        sender = ping.Sender(settings, f"api-{default_worker_id()}")
        beat = asyncio.create_task(app[HEALTH].heartbeat.run())
        async with sender:
            app[POOL], app[SENDER] = pool, sender
            app[HEALTH].ready = True
            yield
        beat.cancel()
        await pool.close()

    app.cleanup_ctx.append(resources)
    return app
