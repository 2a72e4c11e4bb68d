"""The route handlers, in the order of the route table: the OpenAPI document, webhooks (endpoints),
test events, delivery logs and recovery, deliveries and their replay, events.

Each reads its request through ``validation``, works through ``registry`` and ``history``, and
answers JSON in the shapes of ``models``; whatever belongs to another org is not found.
"""

from typing import Any

import psycopg
from aiohttp import web

from deliverer.api import models, openapi
from deliverer.api.context import KEY_ID, ORG, POOL, SENDER, SETTINGS
from deliverer.api.errors import ApiError, not_found
from deliverer.api.validation import (
    event_type_filter,
    event_types_filter,
    json_body,
    known_query,
    outcome_filter,
    page_limit,
    parse_id,
    query_timestamp,
    recovery_window,
    webhook_changes,
)
from deliverer.history import logs as history
from deliverer.history import ping, replay
from deliverer.registry import endpoints
from deliverer.registry.errors import EndpointError
from outbox.catalog import OPERATOR_ORG
from outbox.ids import delivery_public_id, parse_delivery_id, parse_event_id

OPENAPI: dict[str, Any] = openapi.document()


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


# Webhooks ----------------------------------------------------------------------


def _invalid(exc: EndpointError) -> ApiError:
    return ApiError(422, "invalid_request", str(exc), exc.field)


def _endpoint_json(endpoint: endpoints.Endpoint) -> dict[str, Any]:
    out = endpoint.as_json()
    out.pop("org_id")  # the caller's own, implied by its key
    return out


async def create_webhook(request: web.Request) -> web.Response:
    body = await json_body(request, models.WebhookCreate)
    limits = endpoints.Limits(body.max_in_flight, body.rate_limit)
    options = endpoints.RequestOptions(body.headers, body.auth)
    async with request.app[POOL].connection() as conn:
        try:
            endpoint = await endpoints.add_async(
                conn, org_id=request[ORG], url=body.url, event_types=body.events, description=body.description,
                limits=limits, options=options, ordering=body.ordering,
                allow_insecure=request.app[SETTINGS].allow_insecure_urls,
                allowed=request.app[SETTINGS].networks)
        except EndpointError as exc:
            raise _invalid(exc) from None
    return web.json_response(_endpoint_json(endpoint), status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        items = await endpoints.list_async(conn, request[ORG])
    return web.json_response({"data": [_endpoint_json(e) for e in items], "operator": request[ORG] == OPERATOR_ORG})


async def send_test_event(request: web.Request) -> web.Response:
    body = await json_body(request, models.TestRequest)
    url = body.webhook_url if "webhook_url" in body.model_fields_set else None
    webhook_id = body.webhook_id if "webhook_id" in body.model_fields_set else None
    if (url is None) == (webhook_id is None):
        raise ApiError(422, "invalid_request", "send exactly one of webhook_url or webhook_id", "webhook_url")
    async with request.app[POOL].connection() as conn:
        if url is not None:
            endpoint = await endpoints.target_by_url(conn, request[ORG], url)
        else:
            assert webhook_id is not None
            endpoint = await endpoints.target_by_id(conn, request[ORG], webhook_id)
        if endpoint is None and url is not None:
            raise ApiError(422, "webhook_not_registered",
                           f"{url} is not a registered webhook of this org; register it first with POST /v1/webhooks",
                           "webhook_url")
        if endpoint is None:
            raise not_found("webhook")
        try:
            outcome = await ping.send(conn, request.app[SENDER], endpoint)
        except ping.EndpointDisabled as exc:
            raise ApiError(409, "webhook_disabled", str(exc)) from None
    return web.json_response(outcome)


async def _own_endpoint(request: web.Request, conn: psycopg.AsyncConnection[Any]) -> endpoints.Endpoint:
    endpoint = await endpoints.get(conn, request.match_info["webhook_id"], request[ORG])
    if endpoint is None:
        raise not_found("webhook")
    return endpoint


async def get_webhook(request: web.Request) -> web.Response:
    """The endpoint with its pacing: the live state of its limits, which the listing leaves out (a query each)."""
    async with request.app[POOL].connection() as conn:
        endpoint = await _own_endpoint(request, conn)
        pacing = await endpoints.pacing(conn, endpoint.id, request.app[SETTINGS].endpoint_max_in_flight)
    return web.json_response(_endpoint_json(endpoint) | {"pacing": pacing.as_json()})


async def update_webhook(request: web.Request) -> web.Response:
    changes = webhook_changes(await json_body(request, models.WebhookUpdate))
    async with request.app[POOL].connection() as conn:
        try:
            endpoint = await endpoints.update(conn, request.match_info["webhook_id"], request[ORG],
                                              allow_insecure=request.app[SETTINGS].allow_insecure_urls,
                                              allowed=request.app[SETTINGS].networks, **changes)
        except EndpointError as exc:
            raise _invalid(exc) from None
    if endpoint is None:
        raise not_found("webhook")
    return web.json_response(_endpoint_json(endpoint))


async def delete_webhook(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        if not await endpoints.delete(conn, request.match_info["webhook_id"], request[ORG]):
            raise not_found("webhook")
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        endpoint = await endpoints.rotate_secret(conn, request.match_info["webhook_id"], request[ORG])
    if endpoint is None:
        raise not_found("webhook")
    return web.json_response(_endpoint_json(endpoint))


# Logs and recovery -------------------------------------------------------------


async def webhook_logs(request: web.Request) -> web.Response:
    query = known_query(request, {"event_type", "outcome", "since", "until", "limit", "cursor"})
    outcome = outcome_filter(query.get("outcome"))
    async with request.app[POOL].connection() as conn:
        # Only the caller's own endpoint's logs: a stranger's id is not found before its filters are judged.
        endpoint = await _own_endpoint(request, conn)
        try:
            items, cursor = await history.attempts(
                conn, org_id=request[ORG], endpoint_id=endpoint.id,
                event_type=event_type_filter(query.get("event_type"), "event_type"), outcome=outcome,
                since=query_timestamp(request, "since"), until=query_timestamp(request, "until"),
                cursor=query.get("cursor"), limit=page_limit(request))
        except history.BadCursor as exc:
            raise ApiError(422, "invalid_request", str(exc), "cursor") from None
    return web.json_response({"data": items, "next_cursor": cursor})


async def recover_webhook(request: web.Request) -> web.Response:
    body = await json_body(request, models.RecoverRequest)
    since, until = recovery_window(body)
    dry_run = body.dry_run
    async with request.app[POOL].connection() as conn:
        endpoint = await _own_endpoint(request, conn)
        ids = await replay.recover(conn, endpoint.id, org_id=request[ORG], since=since, until=until,
                                   actor=f"api:{request[KEY_ID]}", dry_run=dry_run)
    result = models.RecoverResult(dry_run=dry_run, count=len(ids), delivery_ids=[delivery_public_id(i) for i in ids])
    return web.json_response(result.model_dump(), status=200 if dry_run else 202)


# Deliveries --------------------------------------------------------------------


async def get_delivery(request: web.Request) -> web.Response:
    delivery_id = parse_id(parse_delivery_id, request.match_info["delivery_id"], "delivery")
    async with request.app[POOL].connection() as conn:
        found = await history.delivery(conn, delivery_id, request[ORG])
    if found is None:
        raise not_found("delivery")
    return web.json_response(found)


async def replay_delivery(request: web.Request) -> web.Response:
    delivery_id = parse_id(parse_delivery_id, request.match_info["delivery_id"], "delivery")
    async with request.app[POOL].connection() as conn:
        done = await replay.replay(conn, [delivery_id], org_id=request[ORG], actor=f"api:{request[KEY_ID]}")
        if not done:
            found = await history.delivery(conn, delivery_id, request[ORG])
            if found is None:
                raise not_found("delivery")
            raise ApiError(409, "delivery_in_progress",
                           f"the delivery is {found['state']}; replay it once it has been delivered or has failed")
        found = await history.delivery(conn, delivery_id, request[ORG])
    return web.json_response(found, status=202)


# Events ------------------------------------------------------------------------


async def list_events(request: web.Request) -> web.Response:
    query = known_query(request, {"after", "limit", "types"})
    types = event_types_filter(query["types"], "types") if "types" in query else None
    async with request.app[POOL].connection() as conn:
        try:
            items, cursor = await history.events_after(conn, request[ORG], cursor=query.get("after"),
                                                       event_types=types, limit=page_limit(request))
        except history.BadCursor as exc:
            raise ApiError(422, "invalid_request", str(exc), "after") from None
    return web.json_response({"data": items, "next_cursor": cursor})


async def get_event(request: web.Request) -> web.Response:
    event_id = parse_id(parse_event_id, request.match_info["event_id"], "event")
    async with request.app[POOL].connection() as conn:
        found = await history.event(conn, event_id, request[ORG])
    if found is None:
        raise not_found("event")
    return web.json_response(found)
