"""Operator events in one in-process worker: what each transition publishes, to whom, and in which transaction.

The same with real `deliverer run` processes, two of them racing, is tests/system/test_operator_events.py.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web

import outbox
from deliverer.api.app import OPENAPI, create_app
from deliverer.delivery.queries import QUERIES
from deliverer.delivery.worker import Worker
from deliverer.registry import apikeys, endpoints
from outbox.catalog import OPERATOR_EVENT_TYPES, OPERATOR_ORG, OPERATOR_SCHEMAS
from tests.support import FakeClock, Receiver, add_endpoint, aeventually, settings_for, webhook_test
from tests.support.api_client import Api


def publish(dsn: str, org_id: str = "org_a") -> str:
    with psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, "webhook.test", webhook_test(), org_id=org_id)
        conn.commit()
    return event_id


def operator_events(db: psycopg.Connection) -> list[tuple[str, dict[str, Any]]]:
    """Every operator event published, oldest first."""
    rows = db.execute("SELECT event_type, body FROM outbox_event WHERE event_type = ANY(%s) ORDER BY created_at, id",
                      [list(OPERATOR_EVENT_TYPES)]).fetchall()
    return [(event_type, json.loads(body)["data"]) for event_type, body in rows]


async def drain(worker: Worker, times: int = 4) -> None:
    for _ in range(times):
        await worker.run_once()


@pytest.fixture
def ops(db: psycopg.Connection, receiver: Receiver) -> endpoints.Endpoint:
    return add_endpoint(db, receiver, "/ops", org_id=OPERATOR_ORG)


class TestOperatorEvents:
    async def test_a_410_disables_once_and_exhausts_once_to_the_operator_only(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, ops: endpoints.Endpoint) -> None:
        """A 410 publishes one endpoint.disabled and one delivery.exhausted, delivered signed to the operator's
        endpoint and to none of the customer's, not even one subscribed to every type."""
        gone = add_endpoint(db, receiver, "/gone", events=["webhook.test"])
        add_endpoint(db, receiver, "/everything")  # org_a, every event type

        async def answer_gone(request: web.Request, n: int) -> web.StreamResponse:
            return web.Response(status=410, text="no such hook")
        receiver.behave("/gone", answer_gone)
        publish(dsn)
        async with Worker(settings_for(dsn)) as worker:
            await drain(worker)
        events = operator_events(db)
        assert sorted(t for t, _ in events) == ["delivery.exhausted", "endpoint.disabled"]
        data = dict(events)
        assert data["endpoint.disabled"]["endpoint_id"] == gone.id
        assert data["endpoint.disabled"]["org_id"] == "org_a"
        assert data["endpoint.disabled"]["reason"] == "the receiver answered 410 Gone"
        assert data["endpoint.disabled"]["last_error"]["http_status"] == 410
        assert data["delivery.exhausted"]["attempts"] == 1
        assert data["delivery.exhausted"]["last_error"]["http_status"] == 410
        received = sorted(json.loads(r.body)["event"] for r in receiver.to("/ops"))
        assert received == ["delivery.exhausted", "endpoint.disabled"]
        assert all(r.signature_ok for r in receiver.to("/ops"))
        assert {json.loads(r.body)["event"] for r in receiver.to("/everything")} <= {
            "webhook.test", "webhook.endpoint_disabled"}
        for event_type, payload in events:
            outbox.catalog.validate(event_type, payload, OPERATOR_ORG)
        assert set(OPERATOR_SCHEMAS) == set(OPERATOR_EVENT_TYPES)

    async def test_the_sixth_failure_publishes_one_delivery_exhausted(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, ops: endpoints.Endpoint,
            clock: FakeClock) -> None:
        """Five failed attempts publish nothing; the sixth, the last of the schedule, one delivery.exhausted
        with its error, committed with that attempt's fact."""
        down = add_endpoint(db, receiver, "/down", events=["webhook.test"])
        receiver.fail_first("/down", 100, status=503)
        publish(dsn)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            for attempt in range(1, 7):
                await worker.run_once()
                assert [t for t, _ in operator_events(db)] == ([] if attempt < 6 else ["delivery.exhausted"])
                clock.advance(3601)
            await drain(worker)
        [(_, data)] = operator_events(db)
        assert (data["endpoint_id"], data["org_id"], data["attempts"]) == (down.id, "org_a", 6)
        assert data["last_error"]["error_class"] == "http_5xx" and data["last_error"]["http_status"] == 503
        [notice] = receiver.to("/ops")
        assert json.loads(notice.body)["data"]["delivery_id"] == data["delivery_id"]
        # The operator event and the last attempt's fact committed in one transaction.
        [(same,)] = db.execute(
            "SELECT e.xmin::text = l.xmin::text FROM outbox_event e, delivery_log l "
            "WHERE e.event_type = 'delivery.exhausted' AND l.kind = 'attempt_finished' AND l.attempt = 6").fetchall()
        assert same

    async def test_a_last_attempt_whose_worker_died_publishes_one_delivery_exhausted(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, ops: endpoints.Endpoint,
            clock: FakeClock) -> None:
        """The sixth attempt's worker dies before reporting: the worker that finds its lease run out writes the
        delivery failed and announces it, in one transaction, once."""
        add_endpoint(db, receiver, "/down", events=["webhook.test"])
        receiver.fail_first("/down", 100, status=503)
        publish(dsn)
        async with Worker(settings_for(dsn, worker_id="A"), clock=clock) as a, \
                   Worker(settings_for(dsn, worker_id="B"), clock=clock) as b:
            for _ in range(5):
                await a.run_once()
                clock.advance(3601)
            [sixth] = await a.claim(10)  # A dies with it
            assert sixth.attempt == 6 and operator_events(db) == []
            clock.advance(60)
            await b.run_once()
            await drain(b)
        [(_, data)] = operator_events(db)
        assert data["attempts"] == 6 and data["last_error"]["error_class"] == "lease_expired"
        assert "its worker stopped before reporting one" in data["reason"]
        assert db.execute("SELECT state FROM delivery_state WHERE org_id = 'org_a'").fetchall() == [("failed",)]
        [(same,)] = db.execute(
            "SELECT e.xmin::text = l.xmin::text FROM outbox_event e, delivery_log l "
            "WHERE e.event_type = 'delivery.exhausted' AND l.kind = 'attempt_abandoned' AND l.attempt = 6").fetchall()
        assert same

    async def test_a_success_after_failures_publishes_one_endpoint_recovered(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, ops: endpoints.Endpoint) -> None:
        """Failures, then a success: one endpoint.recovered with the run's start and last error; more
        successes publish nothing more."""
        flaky = add_endpoint(db, receiver, "/flaky", events=["webhook.test"])
        receiver.fail_first("/flaky", 2, status=500)
        async with Worker(settings_for(dsn, retry_delays=(0, 0, 0))) as worker:
            for _ in range(4):
                publish(dsn)
                await drain(worker)
        [(event_type, data)] = operator_events(db)
        assert event_type == "endpoint.recovered"
        assert (data["endpoint_id"], data["org_id"]) == (flaky.id, "org_a")
        assert data["last_error"]["http_status"] == 500
        assert data["reason"].startswith("an attempt succeeded after failures since ")
        assert [json.loads(r.body)["event"] for r in receiver.to("/ops")] == ["endpoint.recovered"]

    async def test_nothing_is_announced_about_the_operators_own_endpoints(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """A failing operator endpoint is not sent news of its own failures, which would fail in turn."""
        add_endpoint(db, receiver, "/ops", org_id=OPERATOR_ORG)

        async def answer_gone(request: web.Request, n: int) -> web.StreamResponse:
            return web.Response(status=410)
        receiver.behave("/ops", answer_gone)
        publish(dsn, OPERATOR_ORG)
        async with Worker(settings_for(dsn)) as worker:
            await drain(worker)
        assert operator_events(db) == []


class TestSubscribing:
    def test_only_the_operator_org_may_subscribe_to_operator_events(self, db: psycopg.Connection) -> None:
        """A customer's endpoint cannot ask for an operator event type; the operator org's can."""
        with pytest.raises(endpoints.EndpointError, match="operator event types go only to"):
            endpoints.add(db, org_id="org_a", url="https://hooks.example/a", event_types=["delivery.exhausted"],
                          allow_insecure=True)
        ops = endpoints.add(db, org_id=OPERATOR_ORG, url="https://ops.example/hook",
                            event_types=["endpoint.disabled", "delivery.exhausted"], allow_insecure=True)
        assert ops.event_types == ["endpoint.disabled", "delivery.exhausted"]


@pytest.fixture
async def api(dsn: str, db: psycopg.Connection) -> AsyncIterator[Api]:
    """The API, its key the operator org's; other_key a customer's."""
    runner = web.AppRunner(create_app(settings_for(dsn)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    async with aiohttp.ClientSession() as http:
        yield Api(http, f"http://127.0.0.1:{runner.addresses[0][1]}", apikeys.create(db, OPERATOR_ORG).key,
                  apikeys.create(db, "org_a").key)
    await runner.cleanup()


class TestApi:
    def test_the_document_lists_them_apart_from_the_customer_webhooks(self) -> None:
        """x-operator-webhooks holds the operator types, with their schemas; webhooks holds none of them."""
        assert not set(OPERATOR_EVENT_TYPES) & set(OPENAPI["webhooks"])
        assert list(OPENAPI["x-operator-webhooks"]) == list(OPERATOR_EVENT_TYPES)
        components = OPENAPI["components"]["schemas"]
        assert components["OperatorEventType"]["enum"] == list(OPERATOR_EVENT_TYPES)
        for schema in OPERATOR_SCHEMAS.values():
            assert components[schema["title"]]["properties"] == schema["properties"]

    async def test_the_operator_registers_an_endpoint_for_them_and_reads_them(
            self, api: Api, dsn: str, receiver: Receiver, db: psycopg.Connection) -> None:
        """With the operator org's key: the list says operator, operator types are accepted, and their events
        and deliveries are listed; a customer's key is refused them. Every reply fits the document."""
        listed = await api.call("GET", "/v1/webhooks")
        assert listed.body == {"data": [], "operator": True}
        assert (await api.call("GET", "/v1/webhooks", key=api.other_key)).body["operator"] is False
        refused = await api.call("POST", "/v1/webhooks", key=api.other_key, json_body={
            "url": receiver.url("/x"), "events": ["endpoint.disabled"]})
        assert refused.status == 422 and refused.body["error"]["field"] == "events"
        created = await api.call("POST", "/v1/webhooks", json_body={
            "url": receiver.url("/ops"), "events": ["endpoint.disabled", "delivery.exhausted"]})
        assert created.status == 201, created.body
        receiver.secrets["/ops"] = created.body["secret"]
        add_endpoint(db, receiver, "/gone", events=["webhook.test"])
        receiver.behave("/gone", _gone)
        publish(dsn)
        async with Worker(settings_for(dsn)) as worker:
            await drain(worker)

        async def feed(key: str | None = None) -> list[dict[str, Any]] | None:
            # The feed holds back events newer than the oldest transaction running on the server.
            data: list[dict[str, Any]] = (await api.call("GET", "/v1/events", key=key)).body["data"]
            return data if len(data) == 2 else None
        events = await aeventually(feed, "the operator events in the feed")
        assert sorted(e["type"] for e in events) == ["delivery.exhausted", "endpoint.disabled"]
        assert {e["data"]["org_id"] for e in events} == {"org_a"}
        logs = await api.call("GET", f"/v1/webhooks/{created.body['id']}/logs")
        assert sorted(a["event_type"] for a in logs.body["data"]) == ["delivery.exhausted", "endpoint.disabled"]
        filtered = await api.call("GET", f"/v1/webhooks/{created.body['id']}/logs",
                                  params={"event_type": "delivery.exhausted"})
        assert [a["event_type"] for a in filtered.body["data"]] == ["delivery.exhausted"]
        customer = await aeventually(lambda: feed(api.other_key), "the customer's events in the feed")
        assert {e["type"] for e in customer} == {"webhook.test", "webhook.endpoint_disabled"}


async def _gone(request: web.Request, n: int) -> web.StreamResponse:
    return web.Response(status=410)


def _health(endpoint_id: str, *, succeeded: bool, gone: bool) -> dict[str, Any]:
    return {"now": None, "disable_after": 3600.0, "endpoint_ids": [endpoint_id], "succeeded": [succeeded],
            "gone": [gone], "first_failure": [None if succeeded else datetime.now(UTC)]}


class TestRacingWorkers:
    @pytest.mark.parametrize(("succeeded", "gone", "setup"), [
        (False, True, "UPDATE webhook_endpoint SET failing_since = NULL"),
        (True, False, "UPDATE webhook_endpoint SET failing_since = now() - interval '1 minute'"),
    ], ids=["disable", "recover"])
    async def test_the_second_of_two_racing_health_updates_changes_nothing(
            self, dsn: str, db: psycopg.Connection, succeeded: bool, gone: bool, setup: str) -> None:
        """Two workers judge the same endpoint from the same snapshot; the second, which waited for the first's
        row lock, finds the state changed and returns no transition to announce."""
        endpoint = endpoints.add(db, org_id="org_a", url="https://hooks.example/a", allow_insecure=True)
        db.execute(setup)
        params = _health(endpoint.id, succeeded=succeeded, gone=gone)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as first, \
                await psycopg.AsyncConnection.connect(dsn, autocommit=True) as second:
            await first.execute("BEGIN")
            won = await (await first.execute(QUERIES["update_endpoint_health"], params)).fetchall()
            assert len(won) == 1
            waiting = asyncio.create_task(second.execute(QUERIES["update_endpoint_health"], params))
            await aeventually(lambda: db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone() == (1,), "the second update to wait for the first's row lock")
            await first.execute("COMMIT")
            lost = await (await waiting).fetchall()
        assert lost == []
