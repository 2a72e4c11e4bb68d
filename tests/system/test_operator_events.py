"""Operator events from two real `deliverer run` processes racing over one queue: each transition once.

What each event carries, and the single-worker cases, are in tests/integration/test_operator_events.py.
"""

import json
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web

import outbox
from outbox.catalog import OPERATOR_EVENT_TYPES, OPERATOR_ORG
from tests.support import Receiver, add_endpoint, aeventually, count, webhook_test
from tests.support.processes import WorkerProcess, deliverer

FAST = {"DELIVERER_RETRY_DELAYS": "0.05,0.05,0.05,0.05,0.05", "DELIVERER_BATCH_SIZE": "5",
        "DELIVERER_MAX_IN_FLIGHT": "10"}


def publish(dsn: str, n: int, org_id: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        ids = outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), org_id) for _ in range(n)])
        conn.commit()
    return ids


def operator_events(db: psycopg.Connection, event_type: str) -> list[dict[str, Any]]:
    rows = db.execute("SELECT body FROM outbox_event WHERE event_type = %s", [event_type]).fetchall()
    return [json.loads(body)["data"] for (body,) in rows]


def queued_to(db: psycopg.Connection, endpoint_id: str) -> int:
    row = db.execute("SELECT count(*) FROM delivery_queue WHERE endpoint_id = %s", [endpoint_id]).fetchone()
    assert row is not None
    return int(row[0])


async def test_each_transition_is_announced_once_by_racing_workers(
        dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """A 410ing endpoint, one failing every attempt and one that fails, then recovers, with two workers sharing
    their deliveries: one endpoint.disabled, one delivery.exhausted per delivery that failed its last attempt,
    one endpoint.recovered; all of them delivered to the operator's endpoint, none to a customer's."""
    add_endpoint(db, receiver, "/ops", org_id=OPERATOR_ORG)
    everything = add_endpoint(db, receiver, "/everything", org_id="org_b")  # a customer's, every type
    gone = add_endpoint(db, receiver, "/gone", org_id="org_gone")
    down = add_endpoint(db, receiver, "/down", org_id="org_down")
    flaky = add_endpoint(db, receiver, "/flaky", org_id="org_flaky")
    for endpoint in (gone, down, flaky):
        db.execute("UPDATE webhook_endpoint SET max_in_flight = 20 WHERE id = %s", [endpoint.id])
    receiver.behave("/gone", _answer(410))
    receiver.behave("/down", _answer(500))
    healthy = False

    async def flaky_answer(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=200 if healthy else 500)
    receiver.behave("/flaky", flaky_answer)

    workers = [WorkerProcess(dsn, f"w{i}", tmp_path, **FAST) for i in range(2)]
    try:
        for worker in workers:
            await worker.start()
        for worker in workers:
            await worker.wait_started()
        publish(dsn, 20, "org_gone")
        publish(dsn, 10, "org_down")
        publish(dsn, 10, "org_flaky")
        publish(dsn, 5, "org_b")
        # Every delivery to /down and /flaky fails its 6 attempts; every one to /gone ends at its first.
        await aeventually(lambda: sum(queued_to(db, e.id) for e in (gone, down, flaky)) == 0,
                          "the failing deliveries to finish", timeout=60)
        assert operator_events(db, "endpoint.recovered") == []
        healthy = True
        publish(dsn, 20, "org_flaky")
        await aeventually(lambda: queued_to(db, flaky.id) == 0, "the flaky endpoint's new deliveries", timeout=60)
        await aeventually(lambda: count(db, "delivery_queue") == 0, "the operator's deliveries", timeout=60)
    finally:
        codes = [await worker.stop() for worker in workers]
    assert codes == [0, 0], [w.log()[-2000:] for w in workers]

    [disabled] = operator_events(db, "endpoint.disabled")
    assert (disabled["endpoint_id"], disabled["org_id"]) == (gone.id, "org_gone")
    [recovered] = operator_events(db, "endpoint.recovered")
    assert (recovered["endpoint_id"], recovered["org_id"]) == (flaky.id, "org_flaky")
    assert recovered["last_error"]["http_status"] == 500

    exhausted = operator_events(db, "delivery.exhausted")
    announced = [(e["endpoint_id"], e["delivery_id"]) for e in exhausted]
    assert len(announced) == len(set(announced)), "a delivery announced twice"
    # Exactly the deliveries that got a 410, or failed 6 times (never one turned away as disabled).
    answered_410 = {r.delivery_id for r in receiver.to("/gone") if r.status == 410}
    failed_6 = {r.delivery_id for r in receiver.to("/down") + receiver.to("/flaky") if r.attempt == 6}
    assert set(announced) == ({(gone.id, d) for d in answered_410} | {(down.id, d) for d in failed_6
                                                                      if d in _ids(receiver, "/down")}
                              | {(flaky.id, d) for d in failed_6 if d in _ids(receiver, "/flaky")})
    assert len([d for d in failed_6 if d in _ids(receiver, "/down")]) == 10

    to_operator = [json.loads(r.body) for r in receiver.to("/ops") if r.status == 200]
    published = db.execute("SELECT count(*) FROM outbox_event WHERE event_type = ANY(%s)",
                           [list(OPERATOR_EVENT_TYPES)]).fetchone()
    assert published is not None
    assert len({r.event_id for r in receiver.to("/ops")}) == published[0] == 2 + len(exhausted)
    assert all(r.signature_ok for r in receiver.to("/ops"))
    assert {e["event"] for e in to_operator} == set(OPERATOR_EVENT_TYPES)
    assert {json.loads(r.body)["event"] for r in receiver.to("/everything")} == {"webhook.test"}
    assert everything.org_id == "org_b"
    busy = db.execute("SELECT count(DISTINCT worker_id) FROM delivery_log WHERE kind = 'attempt_finished'")
    assert busy.fetchone() == (2,), "the workers did not share the work"


def _answer(status: int):  # type: ignore[no-untyped-def]
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=status)
    return behaviour


def _ids(receiver: Receiver, path: str) -> set[str]:
    return {r.delivery_id for r in receiver.to(path)}


def test_the_cli_registers_an_operator_endpoint_and_refuses_a_customer_one(dsn: str) -> None:
    """`endpoints add --operator` registers an endpoint of the operator org for the operator events; a customer's
    endpoint asking for one is refused in one line."""
    result = deliverer(dsn, "endpoints", "add", "--operator", "--url", "https://ops.example/hook", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert (created["org_id"], created["events"]) == (OPERATOR_ORG, list(OPERATOR_EVENT_TYPES))
    refused = deliverer(dsn, "endpoints", "add", "--org", "org_a", "--url", "https://hooks.example/a",
                        "--events", "delivery.exhausted")
    assert refused.returncode != 0
    assert "operator event types go only to endpoints of the operator org" in refused.stderr
    logs = deliverer(dsn, "logs", "--event-type", "delivery.exhausted", "--json")
    assert logs.returncode == 0, logs.stderr
