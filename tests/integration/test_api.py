"""The webhooks API on a real server, with a real database, keys and receiver."""

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import psycopg
import pytest
from aiohttp import web

import outbox
from deliverer.api.app import OPENAPI, ROUTES, create_app
from deliverer.delivery.worker import Worker
from deliverer.registry import apikeys, endpoints
from tests.support import Receiver, aeventually, job_completed, job_failed, settings_for, webhook_test
from tests.support.api_client import Api


@pytest.fixture
async def api(dsn: str, db: psycopg.Connection) -> AsyncIterator[Api]:
    runner = web.AppRunner(create_app(settings_for(dsn)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    key_a = apikeys.create(db, "org_a").key
    key_b = apikeys.create(db, "org_b", test=True).key
    async with aiohttp.ClientSession() as http:
        yield Api(http, f"http://127.0.0.1:{runner.addresses[0][1]}", key_a, key_b)
    await runner.cleanup()


async def register(api: Api, receiver: Receiver, path: str, events: list[str] | None = None,
                   key: str | None = None) -> dict:
    body = {"url": receiver.url(path)} | ({"events": events} if events is not None else {})
    reply = await api.call("POST", "/v1/webhooks", json_body=body, key=key)
    assert reply.status == 201, reply.body
    receiver.secrets[path] = reply.body["secret"]
    return reply.body


def publish(dsn: str, event_type: str, data: dict, org_id: str = "org_a") -> str:
    with psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, event_type, data, org_id=org_id)
        conn.commit()
    return event_id


async def deliver(dsn: str, **settings: object) -> list:
    async with Worker(settings_for(dsn, **settings)) as worker:
        return await worker.run_once()


_MAX_IN_FLIGHT = ("max_in_flight must be a whole number from 1 to 1000 (requests open at once), "
                  "or null for the deployment's default")
_RATE_LIMIT = ("rate_limit must be a number of deliveries per second above 0 and at most 10000, "
               "or null for the deployment's default")


class TestAuth:
    async def test_missing_and_wrong_keys_are_401(self, api: Api) -> None:
        """No key, a malformed header or an unknown key all get 401 with a JSON error."""
        for key, headers in (("", None), ("sk_live_nope", None), ("", {"Authorization": "Basic abc"})):
            reply = await api.call("GET", "/v1/webhooks", key=key, headers=headers)
            assert reply.status == 401
            assert reply.body["error"]["code"] == "unauthorized"

    async def test_openapi_document_is_public_and_matches_the_routes(self, api: Api) -> None:
        """/v1/openapi.json needs no key, and documents exactly the routes the server has."""
        reply = await api.call("GET", "/v1/openapi.json", key="")
        assert reply.status == 200 and reply.body == OPENAPI
        served = {(method.lower(), re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)) for method, path, _ in ROUTES}
        documented = {(m, p) for p, ops in OPENAPI["paths"].items() for m in ops}
        assert served == documented


class TestEndpoints:
    async def test_create_list_get_update_rotate_delete(self, api: Api, receiver: Receiver) -> None:
        """An endpoint's whole life through the API; its secret appears only on create and rotate."""
        created = await register(api, receiver, "/hook", ["job.completed"])
        assert created["secret"].startswith("whsec_") and created["events"] == ["job.completed"]
        assert created["enabled"] is True
        listed = await api.call("GET", "/v1/webhooks")
        assert [e["id"] for e in listed.body["data"]] == [created["id"]]
        assert "secret" not in listed.body["data"][0]
        got = await api.call("GET", f"/v1/webhooks/{created['id']}")
        assert got.body["url"] == receiver.url("/hook") and "secret" not in got.body
        patched = await api.call("PATCH", f"/v1/webhooks/{created['id']}",
                                 json_body={"events": ["*"], "enabled": False, "description": "ops"})
        assert (patched.body["events"], patched.body["enabled"], patched.body["description"]) == (["*"], False, "ops")
        rotated = await api.call("POST", f"/v1/webhooks/{created['id']}/rotate-secret")
        assert rotated.status == 200 and rotated.body["secret"] not in (None, created["secret"])
        assert (await api.call("DELETE", f"/v1/webhooks/{created['id']}")).status == 204
        assert (await api.call("GET", f"/v1/webhooks/{created['id']}")).status == 404
        assert (await api.call("DELETE", f"/v1/webhooks/{created['id']}")).status == 404
        assert (await api.call("GET", "/v1/webhooks")).body["data"] == []

    async def test_rotated_secret_signs_the_next_delivery(self, api: Api, dsn: str, receiver: Receiver) -> None:
        """After rotation, receivers verify with the new secret."""
        created = await register(api, receiver, "/hook")
        rotated = await api.call("POST", f"/v1/webhooks/{created['id']}/rotate-secret")
        receiver.secrets["/hook"] = rotated.body["secret"]
        publish(dsn, "webhook.test", webhook_test())
        await deliver(dsn)
        assert [r.signature_ok for r in receiver.requests] == [True]

    @pytest.mark.parametrize(("body", "field", "text"), [
        ({"url": "ftp://x.example/hook"}, "url", "https://"),
        ({"url": "https://x.example/hook", "events": ["job.exploded"]}, "events", "unknown event type"),
        ({"url": "https://x.example/hook", "events": "job.completed"}, "events", "list of event types"),
        ({"url": 5}, "url", "must be an https:// URL"),
        ({}, "url", "url is required"),
        ({"url": "https://x.example/hook", "colour": "red"}, "colour", "unknown field 'colour'"),
        ({"url": "https://x.example/hook", "description": "d" * 1001}, "description", "at most 1000"),
        ({"url": "https://x.example/hook", "events": ["*", "job.nope"]}, "events", "unknown event type(s) job.nope"),
        ({"url": "https://x.example/hook", "description": "a\x00b"}, "description", "NUL character"),
        ({"url": "https://x.example/hook", "description": None}, "description", "must be a string"),
    ])
    async def test_invalid_endpoints_get_422_naming_the_field(self, api: Api, body: dict, field: str,
                                                              text: str) -> None:
        """Each invalid field is a 422 whose error names the field and says what is wrong."""
        reply = await api.call("POST", "/v1/webhooks", json_body=body)
        assert reply.status == 422
        assert reply.body["error"]["field"] == field
        assert text in reply.body["error"]["message"]


    async def test_limits_are_set_kept_and_reset_to_the_default(self, api: Api, receiver: Receiver) -> None:
        """max_in_flight and rate_limit come back on every endpoint JSON; PATCH changes only the ones sent,
        and null puts one back on the deployment's default."""
        created = await register(api, receiver, "/hook")
        assert (created["max_in_flight"], created["rate_limit"]) == (None, None)
        path = f"/v1/webhooks/{created['id']}"
        patched = await api.call("PATCH", path, json_body={"max_in_flight": 5, "rate_limit": 2.5})
        assert patched.status == 200 and (patched.body["max_in_flight"], patched.body["rate_limit"]) == (5, 2.5)
        kept = await api.call("PATCH", path, json_body={"description": "ops", "rate_limit": None})
        assert (kept.body["max_in_flight"], kept.body["rate_limit"], kept.body["description"]) == (5, None, "ops")
        listed = (await api.call("GET", "/v1/webhooks")).body["data"]
        assert [(e["max_in_flight"], e["rate_limit"]) for e in listed] == [(5, None)]
        assert "pacing" not in listed[0]
        body = {"url": receiver.url("/other"), "max_in_flight": 1000.0, "rate_limit": 10000}
        other = await api.call("POST", "/v1/webhooks", json_body=body)
        assert other.status == 201 and (other.body["max_in_flight"], other.body["rate_limit"]) == (1000, 10000.0)

    async def test_get_shows_the_live_pacing(self, api: Api, receiver: Receiver, db: psycopg.Connection) -> None:
        """GET of one endpoint has its shared limits state: zeros before anything was sent, then the
        requests open (leases not run out), endpoint_flow's allowance within max_in_flight and only a
        pause that still runs."""
        created = await register(api, receiver, "/hook")
        path = f"/v1/webhooks/{created['id']}"
        got = await api.call("GET", path)
        assert got.body["pacing"] == {"in_flight": 0, "allowance": 0, "paused_until": None}
        db.execute("INSERT INTO endpoint_flow (endpoint_id, allowance, paused_until) "
                   "VALUES (%s, 40, '2999-01-01T00:00:00Z')", [created["id"]])
        db.execute("INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at,"
                   " leased_by) SELECT gen_random_uuid(), gen_random_uuid(), %s, 'org_a', 1, 1, now() + d, 'w1'"
                   " FROM unnest(ARRAY[interval '30 s', interval '30 s', interval '30 s', interval '-1 s']) AS d",
                   [created["id"]])  # three leases open, one run out
        assert (await api.call("GET", path)).body["pacing"] == {
            "in_flight": 3, "allowance": 40, "paused_until": "2999-01-01T00:00:00Z"}
        await api.call("PATCH", path, json_body={"max_in_flight": 10})
        db.execute("UPDATE endpoint_flow SET paused_until = now() - interval '1 s'")
        assert (await api.call("GET", path)).body["pacing"] == {"in_flight": 3, "allowance": 10, "paused_until": None}

    @pytest.mark.parametrize(("method", "limits", "field", "message"), [
        ("POST", {"max_in_flight": 0}, "max_in_flight", _MAX_IN_FLIGHT),
        ("PATCH", {"max_in_flight": 1001}, "max_in_flight", _MAX_IN_FLIGHT),
        ("POST", {"max_in_flight": 2.5}, "max_in_flight", _MAX_IN_FLIGHT),
        ("PATCH", {"max_in_flight": "10"}, "max_in_flight", _MAX_IN_FLIGHT),
        ("POST", {"max_in_flight": True}, "max_in_flight", _MAX_IN_FLIGHT),
        ("POST", {"rate_limit": 0}, "rate_limit", _RATE_LIMIT),
        ("PATCH", {"rate_limit": -1}, "rate_limit", _RATE_LIMIT),
        ("POST", {"rate_limit": 10000.5}, "rate_limit", _RATE_LIMIT),
        ("PATCH", {"rate_limit": "fast"}, "rate_limit", _RATE_LIMIT),
        ("PATCH", {"rate_limit": [1]}, "rate_limit", _RATE_LIMIT),
    ])
    async def test_invalid_limits_get_422_saying_what_is_allowed(self, api: Api, receiver: Receiver, method: str,
                                                                 limits: dict, field: str, message: str) -> None:
        """Each refused limit names its field and the allowed range, on create and on update alike;
        nothing is stored."""
        created = await register(api, receiver, "/hook")
        path = "/v1/webhooks" if method == "POST" else f"/v1/webhooks/{created['id']}"
        reply = await api.call(method, path, json_body={"url": receiver.url("/new")} | limits)
        assert reply.status == 422
        assert reply.body["error"] == {"code": "invalid_request", "message": message, "field": field}
        stored = (await api.call("GET", "/v1/webhooks")).body["data"]
        assert [(e["url"], e["max_in_flight"], e["rate_limit"]) for e in stored] == [(receiver.url("/hook"), None,
                                                                                       None)]

    async def test_ordering_is_set_changed_and_refused_when_unknown(self, api: Api, receiver: Receiver) -> None:
        created = await register(api, receiver, "/hook")
        assert created["ordering"] == "none"
        path = f"/v1/webhooks/{created['id']}"
        patched = await api.call("PATCH", path, json_body={"ordering": "fifo"})
        assert patched.status == 200 and patched.body["ordering"] == "fifo"
        fifo = await api.call("POST", "/v1/webhooks", json_body={"url": receiver.url("/fifo"), "ordering": "fifo"})
        assert fifo.status == 201 and fifo.body["ordering"] == "fifo"
        for method, where, body in (("POST", "/v1/webhooks", {"url": receiver.url("/x"), "ordering": "lifo"}),
                                    ("PATCH", path, {"ordering": None})):
            reply = await api.call(method, where, json_body=body)
            assert reply.status == 422 and reply.body["error"]["field"] == "ordering", reply.body
            assert reply.body["error"]["message"].startswith('ordering must be "none"')
        assert [e["ordering"] for e in (await api.call("GET", "/v1/webhooks")).body["data"]] == ["fifo", "fifo"]

    async def test_an_org_has_at_most_100_endpoints(self, api: Api, db: psycopg.Connection) -> None:
        """The 101st endpoint of an org is refused with a way out; other orgs are unaffected."""
        for i in range(endpoints.MAX_ENDPOINTS_PER_ORG):
            endpoints.add(db, org_id="org_a", url=f"https://hooks{i}.example/hook", allow_insecure=True)
        reply = await api.call("POST", "/v1/webhooks", json_body={"url": "https://one-more.example/hook"})
        assert reply.status == 422 and "delete one it no longer needs" in reply.body["error"]["message"]
        other = await api.call("POST", "/v1/webhooks", json_body={"url": "https://one-more.example/hook"},
                               key=api.other_key)
        assert other.status == 201


    async def test_registration_honours_the_allowed_networks_setting(self, dsn: str, db: psycopg.Connection) -> None:
        """Over https, a private network listed in DELIVERER_ALLOWED_NETWORKS may be registered; others may not."""
        settings = settings_for(dsn, allow_insecure_urls=False, allowed_networks="10.1.0.0/16")
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        key = apikeys.create(db, "org_net").key
        try:
            async with aiohttp.ClientSession() as http:
                api = Api(http, f"http://127.0.0.1:{runner.addresses[0][1]}", key, key)
                listed = await api.call("POST", "/v1/webhooks", json_body={"url": "https://10.1.2.3/hook"})
                other = await api.call("POST", "/v1/webhooks", json_body={"url": "https://10.2.0.1/hook"})
        finally:
            await runner.cleanup()
        assert listed.status == 201, listed.body
        assert other.status == 422 and "DELIVERER_ALLOWED_NETWORKS" in other.body["error"]["message"]


class TestErrors:
    async def test_malformed_requests(self, api: Api) -> None:
        """Bad JSON 400, wrong shape 422, too large 413, unknown route 404, wrong method 405: all JSON."""
        cases = [
            (await api.call("POST", "/v1/webhooks", data=b"{not json"), 400, "invalid_json"),
            (await api.call("POST", "/v1/webhooks", data=b""), 400, "invalid_json"),
            (await api.call("POST", "/v1/webhooks", json_body=["url"]), 422, "invalid_request"),
            (await api.call("POST", "/v1/webhooks", data=b'{"url": "' + b"a" * 70_000 + b'"}'), 413,
             "payload_too_large"),
            (await api.call("GET", "/v1/nothing-here"), 404, "not_found"),
            (await api.call("PUT", "/v1/webhooks"), 405, "method_not_allowed"),
            (await api.call("GET", "/v1/deliveries/not-an-id"), 404, "not_found"),
            (await api.call("GET", "/v1/events/evt_zz"), 404, "not_found"),
            (await api.call("GET", "/v1/events", params={"after": "garbage!"}), 422, "invalid_request"),
            (await api.call("GET", "/v1/events", params={"limit": "0"}), 422, "invalid_request"),
            (await api.call("GET", "/v1/events", params={"types": "job.nope"}), 422, "invalid_request"),
        ]
        for reply, status, code in cases:
            assert (reply.status, reply.body["error"]["code"]) == (status, code), reply.body


class TestTestEvents:
    async def test_the_seed_curl_call_delivers_a_signed_test_event(self, api: Api, receiver: Receiver,
                                                                   db: psycopg.Connection) -> None:
        """POST /v1/webhooks/test {"webhook_url": …} sends the docs' webhook.test event and reports the outcome."""
        await register(api, receiver, "/webhooks/docextract")
        reply = await api.call("POST", "/v1/webhooks/test",
                               json_body={"webhook_url": receiver.url("/webhooks/docextract")},
                               headers={"Content-Type": "application/json"})
        assert reply.status == 200
        assert reply.body["delivered"] is True and reply.body["http_status"] == 200
        [request] = receiver.requests
        assert request.signature_ok is True
        event = json.loads(request.body)
        assert event["event"] == "webhook.test"
        assert event["data"]["message"] == "This is a test webhook event"
        assert datetime.fromisoformat(event["data"]["timestamp"]).tzinfo is not None
        assert event["data"]["timestamp"].endswith("Z")
        assert request.headers["X-DocExtract-Event-Id"] == reply.body["event_id"]
        assert db.execute("SELECT state FROM delivery_state").fetchall() == [("delivered",)]

    async def test_a_test_event_continues_the_trace_of_the_request_that_sent_it(
            self, api: Api, receiver: Receiver, db: psycopg.Connection) -> None:
        """A POST /v1/webhooks/test carrying a traceparent stores it with the test event, and the receiver
        gets it (no exporter here: the caller's own span is forwarded)."""
        created = await register(api, receiver, "/hook")
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        reply = await api.call("POST", "/v1/webhooks/test", json_body={"webhook_id": created["id"]},
                               headers={"traceparent": traceparent, "tracestate": "rojo=00f067aa0ba902b7"})
        assert reply.body["delivered"] is True
        [request] = receiver.requests
        assert (request.headers["traceparent"], request.headers["tracestate"]) == (
            traceparent, "rojo=00f067aa0ba902b7")
        assert db.execute("SELECT traceparent FROM outbox_event").fetchall() == [(traceparent,)]

    async def test_failing_receiver_is_reported_not_retried(self, api: Api, receiver: Receiver,
                                                            db: psycopg.Connection) -> None:
        """A test event answered with 500 reports the status and error, and is not retried later."""
        created = await register(api, receiver, "/down")
        receiver.fail_first("/down", 10)
        reply = await api.call("POST", "/v1/webhooks/test", json_body={"webhook_id": created["id"]})
        assert (reply.body["delivered"], reply.body["http_status"], reply.body["error_message"]) == (
            False, 500, "HTTP 500")
        assert db.execute("SELECT state FROM delivery_state").fetchall() == [("failed",)]
        assert db.execute("SELECT count(*) FROM delivery_queue").fetchone() == (0,)

    async def test_unregistered_url_is_told_to_register_first(self, api: Api, receiver: Receiver) -> None:
        """A URL that is not this org's endpoint gets a 422 saying to register it first."""
        await register(api, receiver, "/hook", key=api.other_key)
        reply = await api.call("POST", "/v1/webhooks/test", json_body={"webhook_url": receiver.url("/hook")})
        assert reply.status == 422
        assert "register it first" in reply.body["error"]["message"]
        assert receiver.requests == []
        both = await api.call("POST", "/v1/webhooks/test", json_body={"webhook_url": "x", "webhook_id": "y"})
        assert both.status == 422

    async def test_disabled_endpoint_is_a_conflict(self, api: Api, receiver: Receiver) -> None:
        """Test events are not sent to a disabled endpoint; the error says to enable it."""
        created = await register(api, receiver, "/hook")
        await api.call("PATCH", f"/v1/webhooks/{created['id']}", json_body={"enabled": False})
        reply = await api.call("POST", "/v1/webhooks/test", json_body={"webhook_id": created["id"]})
        assert reply.status == 409 and "enable it" in reply.body["error"]["message"]


class TestLogsAndReplay:
    async def test_logs_list_attempts_newest_first_with_filters(self, api: Api, dsn: str,
                                                                receiver: Receiver) -> None:
        """The log shows each attempt with the docs' columns; filters narrow it."""
        created = await register(api, receiver, "/hook")
        receiver.fail_first("/hook", 1)
        first = publish(dsn, "job.failed", job_failed())
        await deliver(dsn)
        second = publish(dsn, "job.completed", job_completed())
        await deliver(dsn)
        logs = (await api.call("GET", f"/v1/webhooks/{created['id']}/logs")).body["data"]
        assert [(a["event_id"], a["outcome"], a["http_status"]) for a in logs] == [
            (second, "succeeded", 200), (first, "failed", 500)]
        newest = logs[0]
        assert newest["event_type"] == "job.completed" and newest["attempt"] == 1
        assert newest["response_time_ms"] >= 0 and newest["timestamp"].endswith("Z")
        assert logs[1]["error_message"] == "HTTP 500" and logs[1]["next_attempt_at"] is not None
        failed_only = await api.call("GET", f"/v1/webhooks/{created['id']}/logs", params={"outcome": "failed"})
        assert [a["event_id"] for a in failed_only.body["data"]] == [first]
        by_type = await api.call("GET", f"/v1/webhooks/{created['id']}/logs", params={"event_type": "job.completed"})
        assert [a["event_id"] for a in by_type.body["data"]] == [second]
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        later = await api.call("GET", f"/v1/webhooks/{created['id']}/logs", params={"since": future})
        assert later.body["data"] == []

    async def test_pagination_stays_correct_while_attempts_arrive(self, api: Api, dsn: str,
                                                                  receiver: Receiver) -> None:
        """Paging with the cursor returns every older attempt once, even as new ones are recorded between pages."""
        created = await register(api, receiver, "/hook")
        older = [publish(dsn, "webhook.test", webhook_test()) for _ in range(7)]
        await deliver(dsn)
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
            page = await api.call("GET", f"/v1/webhooks/{created['id']}/logs", params=params)
            seen += [a["event_id"] for a in page.body["data"]]
            publish(dsn, "webhook.test", webhook_test())  # a new attempt lands on top between pages
            await deliver(dsn)
            cursor = page.body["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(older)
        assert len(seen) == len(set(seen))

    async def test_delivery_detail_and_replay_start_a_new_series(self, api: Api, dsn: str, receiver: Receiver,
                                                                 db: psycopg.Connection) -> None:
        """A failed delivery replayed after the receiver recovers is delivered; both series stay in the log."""
        await register(api, receiver, "/flaky")
        receiver.fail_first("/flaky", 1)
        event_id = publish(dsn, "job.completed", job_completed())
        [result] = await deliver(dsn, retry_delays=())
        delivery_id = "dlv_" + result.claimed.delivery_id.hex
        detail = (await api.call("GET", f"/v1/deliveries/{delivery_id}")).body
        assert (detail["state"], detail["attempts"], detail["event_id"]) == ("failed", 1, event_id)
        assert [h["kind"] for h in detail["history"]] == ["scheduled", "attempt_finished"]

        replayed = await api.call("POST", f"/v1/deliveries/{delivery_id}/replay")
        assert replayed.status == 202
        assert (replayed.body["state"], replayed.body["series"]) == ("pending", 2)
        again = await api.call("POST", f"/v1/deliveries/{delivery_id}/replay")
        assert again.status == 409 and "pending" in again.body["error"]["message"]
        await deliver(dsn)
        detail = (await api.call("GET", f"/v1/deliveries/{delivery_id}")).body
        assert (detail["state"], detail["series"], detail["attempts"]) == ("delivered", 2, 1)
        replay_fact = next(h for h in detail["history"] if h["kind"] == "replay_requested")
        assert replay_fact["actor"].startswith("api:key_")
        assert receiver.event_ids() == [event_id, event_id]
        logs = (await api.call("GET", f"/v1/webhooks/{result.claimed.endpoint_id}/logs")).body["data"]
        assert [(a["series"], a["attempt"], a["outcome"]) for a in logs] == [(2, 1, "succeeded"), (1, 1, "failed")]

    async def test_recover_replays_failed_deliveries_in_the_window(self, api: Api, dsn: str,
                                                                   receiver: Receiver) -> None:
        """recover with dry_run counts; without it replays exactly the failed deliveries of that window."""
        created = await register(api, receiver, "/down")
        receiver.fail_first("/down", 3)
        since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        ids = [publish(dsn, "webhook.test", webhook_test()) for _ in range(3)]
        await deliver(dsn, retry_delays=())
        path = f"/v1/webhooks/{created['id']}/recover"
        dry = await api.call("POST", path, json_body={"since": since, "dry_run": True})
        assert (dry.status, dry.body["count"]) == (200, 3)
        future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        much_later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        none = await api.call("POST", path, json_body={"since": future, "until": much_later, "dry_run": True})
        assert none.body["count"] == 0
        bad = await api.call("POST", path, json_body={"since": future, "until": since})
        assert bad.status == 422 and bad.body["error"]["field"] == "until"
        done = await api.call("POST", path, json_body={"since": since})
        assert (done.status, done.body["count"]) == (202, 3)
        await deliver(dsn)
        assert sorted(receiver.event_ids()) == sorted(ids * 2)
        again = await api.call("POST", path, json_body={"since": since, "dry_run": True})
        assert again.body["count"] == 0


class TestTenancy:
    async def test_another_orgs_things_are_404(self, api: Api, dsn: str, receiver: Receiver) -> None:
        """Org B can neither read, change, replay nor recover anything of org A: all 404."""
        endpoint = await register(api, receiver, "/hook")
        event_id = publish(dsn, "job.completed", job_completed())
        [result] = await deliver(dsn)
        delivery_id = "dlv_" + result.claimed.delivery_id.hex
        b = api.other_key
        attempts = [
            await api.call("GET", f"/v1/webhooks/{endpoint['id']}", key=b),
            await api.call("PATCH", f"/v1/webhooks/{endpoint['id']}", json_body={"enabled": False}, key=b),
            await api.call("DELETE", f"/v1/webhooks/{endpoint['id']}", key=b),
            await api.call("POST", f"/v1/webhooks/{endpoint['id']}/rotate-secret", key=b),
            await api.call("GET", f"/v1/webhooks/{endpoint['id']}/logs", key=b),
            await api.call("POST", f"/v1/webhooks/{endpoint['id']}/recover",
                           json_body={"since": "2024-01-01T00:00:00Z"}, key=b),
            await api.call("GET", f"/v1/deliveries/{delivery_id}", key=b),
            await api.call("POST", f"/v1/deliveries/{delivery_id}/replay", key=b),
            await api.call("GET", f"/v1/events/{event_id}", key=b),
            await api.call("POST", "/v1/webhooks/test", json_body={"webhook_id": endpoint["id"]}, key=b),
        ]
        assert [r.status for r in attempts] == [404] * len(attempts)
        nonexistent = await api.call("GET", "/v1/webhooks/ep_000000000000000000000000", key=b)
        assert attempts[0].body == nonexistent.body
        assert (await api.call("GET", "/v1/webhooks", key=b)).body["data"] == []
        assert (await api.call("GET", "/v1/events", key=b)).body["data"] == []
        assert (await api.call("GET", f"/v1/webhooks/{endpoint['id']}")).body["enabled"] is True
        assert len(receiver.requests) == 1


class TestEvents:
    async def test_event_with_its_deliveries(self, api: Api, dsn: str, receiver: Receiver) -> None:
        """GET /v1/events/{id} returns the payload as sent and each delivery's state."""
        await register(api, receiver, "/a")
        await register(api, receiver, "/b", ["job.failed"])
        await register(api, receiver, "/c", ["job.completed"])
        event_id = publish(dsn, "job.completed", job_completed())
        await deliver(dsn)
        reply = await api.call("GET", f"/v1/events/{event_id}")
        assert reply.body["type"] == "job.completed" and reply.body["data"] == job_completed()
        assert [d["state"] for d in reply.body["deliveries"]] == ["delivered", "delivered"]

    async def test_polling_sees_late_commits_exactly_once(self, api: Api, dsn: str) -> None:
        """Events committed out of id order each reach a poller exactly once, in commit order."""
        seen: list[str] = []
        cursor = None

        async def poll() -> list[str]:
            nonlocal cursor
            params = {"limit": "2"} | ({"after": cursor} if cursor else {})
            page = await api.call("GET", "/v1/events", params=params)
            cursor = page.body["next_cursor"]
            return [e["id"] for e in page.body["data"]]

        slow = psycopg.connect(dsn)
        fast = psycopg.connect(dsn)
        try:
            early_id = outbox.publish(slow, "webhook.test", webhook_test(), org_id="org_a")  # smaller id, commits last
            late_ids = [outbox.publish(fast, "webhook.test", webhook_test(), org_id="org_a") for _ in range(3)]
            fast.commit()
            seen += await poll()  # the slow transaction is still open: nothing may be returned past it
            assert seen == []
            slow.commit()
            # Transactions of other databases on the same server hold the watermark
            # too, so wait for the events instead of expecting them on the next call.
            async def all_four_seen() -> bool:
                nonlocal seen
                seen += await poll()
                return len(seen) >= 4
            await aeventually(all_four_seen, lambda: f"all 4 events in the polled pages (seen {seen})")
            seen += await poll()
        finally:
            slow.close()
            fast.close()
        publish(dsn, "webhook.test", webhook_test(), org_id="org_b")  # another org's event is not seen
        seen += await poll()
        assert sorted(seen) == sorted([early_id, *late_ids])
        assert len(seen) == len(set(seen))
        assert seen[0] == early_id, "commit order follows the transaction that started writing first"
