"""Endpoint headers and auth end to end: registered through the API, sealed in the database, sent by a real
worker to real loopback receivers that require them (HTTP Basic, a bearer token, a client certificate)."""

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import psycopg
import pytest
from aiohttp import web

from deliverer.api.app import create_app
from deliverer.dev.receiver import Behaviour
from deliverer.registry import apikeys
from tests.integration.test_api import deliver, publish
from tests.support import Receiver, settings_for, webhook_test
from tests.support.api_client import Api
from tests.support.certificates import CA


@pytest.fixture
async def api(dsn: str, db: psycopg.Connection) -> AsyncIterator[Api]:
    runner = web.AppRunner(create_app(settings_for(dsn)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    key_a, key_b = apikeys.create(db, "org_a").key, apikeys.create(db, "org_b").key
    async with aiohttp.ClientSession() as http:
        yield Api(http, f"http://127.0.0.1:{runner.addresses[0][1]}", key_a, key_b)
    await runner.cleanup()


def requiring(header: str, expected: str) -> Behaviour:
    """A receiver's behaviour: 401 unless ``header`` is exactly ``expected``."""
    async def behaviour(request: web.Request, n: int) -> web.Response:
        if request.headers.get(header) != expected:
            return web.Response(status=401, text="unauthorized")
        return web.Response(text="OK")
    return behaviour


async def register(api: Api, url: str, **fields: object) -> dict:
    reply = await api.call("POST", "/v1/webhooks", json_body={"url": url, **fields})
    assert reply.status == 201, reply.body
    return reply.body


def stored_row(db: psycopg.Connection, endpoint_id: str) -> str:
    row = db.execute("SELECT headers::text, auth_type, auth FROM webhook_endpoint WHERE id = %s",
                     [endpoint_id]).fetchone()
    assert row is not None
    return " ".join(str(v) for v in row)


async def test_basic_and_bearer_receivers_get_their_credentials_and_headers(
        api: Api, dsn: str, db: psycopg.Connection) -> None:
    """Each receiver answers 401 without its credentials: the endpoints with auth are delivered (custom headers
    included), the one without is refused; the credentials are sealed in the database and never returned."""
    basic = "Basic " + base64.b64encode(b"docextract:s3cret pw").decode()
    async with Receiver() as receiver:
        receiver.behave("/basic", requiring("Authorization", basic))
        receiver.behave("/bearer", requiring("Authorization", "Bearer t0k3n-abc"))
        receiver.behave("/none", requiring("Authorization", "Bearer t0k3n-abc"))
        with_basic = await register(api, receiver.url("/basic"), headers={"X-Tenant": "acme", "X-Api-Key": "k-123"},
                                    auth={"type": "basic", "username": "docextract", "password": "s3cret pw"})
        with_bearer = await register(api, receiver.url("/bearer"), auth={"type": "bearer", "token": "t0k3n-abc"})
        await register(api, receiver.url("/none"))
        publish(dsn, "webhook.test", webhook_test())
        results = await deliver(dsn, retry_delays=())
        assert sorted((r.claimed.url.rsplit("/", 1)[1], r.outcome.http_status) for r in results) == [
            ("basic", 200), ("bearer", 200), ("none", 401)]
        sent = receiver.to("/basic")[0].headers
        assert (sent["X-Tenant"], sent["X-Api-Key"]) == ("acme", "k-123")
        assert "X-Tenant" not in receiver.to("/bearer")[0].headers

        assert with_basic["header_names"] == ["X-Api-Key", "X-Tenant"] and with_basic["auth"] == {"type": "basic"}
        listed = (await api.call("GET", "/v1/webhooks")).body["data"]
        fetched = (await api.call("GET", f"/v1/webhooks/{with_bearer['id']}")).body
        for text in (str(with_basic), str(listed), str(fetched)):
            for secret in ("s3cret pw", "t0k3n-abc", "k-123", "acme"):
                assert secret not in text
        assert fetched["auth"] == {"type": "bearer"}
        for endpoint, secrets in ((with_basic, ("s3cret pw", "k-123", "acme")), (with_bearer, ("t0k3n-abc",))):
            row = stored_row(db, endpoint["id"])
            assert all(s not in row for s in secrets), row

        # The test event goes through the same path: it carries the endpoint's auth too.
        ping = await api.call("POST", "/v1/webhooks/test", json_body={"webhook_id": with_bearer["id"]})
        assert ping.body["delivered"] is True, ping.body


async def test_update_replaces_headers_and_auth_or_removes_them(api: Api, dsn: str, db: psycopg.Connection) -> None:
    """PATCH with headers replaces all of them, auth replaces the auth, null removes either; a field left out
    keeps what is stored."""
    async with Receiver() as receiver:
        receiver.behave("/hook", requiring("Authorization", "Bearer new-token"))
        endpoint = await register(api, receiver.url("/hook"), headers={"X-Old": "1"},
                                  auth={"type": "bearer", "token": "old-token"})
        path = f"/v1/webhooks/{endpoint['id']}"
        changed = await api.call("PATCH", path, json_body={"auth": {"type": "bearer", "token": "new-token"}})
        assert changed.body["header_names"] == ["X-Old"] and changed.body["auth"] == {"type": "bearer"}
        changed = await api.call("PATCH", path, json_body={"headers": {"X-New": "2"}})
        assert changed.body["header_names"] == ["X-New"] and changed.body["auth"] == {"type": "bearer"}
        publish(dsn, "webhook.test", webhook_test())
        [result] = await deliver(dsn, retry_delays=())
        assert result.outcome.http_status == 200
        assert "X-Old" not in receiver.requests[0].headers and receiver.requests[0].headers["X-New"] == "2"
        cleared = await api.call("PATCH", path, json_body={"headers": None, "auth": None})
        assert (cleared.body["header_names"], cleared.body["auth"]) == ([], None)
        assert db.execute("SELECT headers, auth_type, auth FROM webhook_endpoint").fetchone() == (None, None, None)


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"headers": {"X-DocExtract-Signature": "forged"}}, "headers", "header 'X-DocExtract-Signature' is reserved"),
    ({"headers": {"webhook-id": "x"}}, "headers", "header 'webhook-id' is reserved"),
    ({"headers": {"Authorization": "Bearer x"}}, "headers", "set auth instead"),
    ({"headers": {"X-Big": "v" * 1025}}, "headers", "at most 1024 characters"),
    ({"auth": {"type": "bearer"}}, "auth", "exactly the string fields token"),
    ({"auth": {"type": "kerberos"}}, "auth", "auth must be"),
])
async def test_refusals_are_422_naming_the_field(api: Api, db: psycopg.Connection, fields: dict, field: str,
                                                 message: str) -> None:
    """On create and on update, with the registry's message; nothing is stored."""
    refused = await api.call("POST", "/v1/webhooks", json_body={"url": "https://example.com/hook", **fields})
    assert refused.status == 422 and refused.body["error"]["field"] == field, refused.body
    assert message in refused.body["error"]["message"]
    created = await register(api, "https://example.com/hook")
    refused = await api.call("PATCH", f"/v1/webhooks/{created['id']}", json_body=fields)
    assert refused.status == 422 and message in refused.body["error"]["message"], refused.body
    assert db.execute("SELECT count(*) FROM webhook_endpoint WHERE headers IS NOT NULL OR auth IS NOT NULL"
                      ).fetchone() == (0,)


class TestMutualTls:
    """A receiver whose TLS server requires a client certificate signed by the customer's CA."""

    @pytest.fixture
    async def receiver(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Receiver, CA]]:
        server_ca, client_ca = CA("receiver's server CA"), CA("customer's client CA")
        # The worker verifies the receiver as any HTTPS endpoint, against the default trust store: this one.
        monkeypatch.setenv("SSL_CERT_FILE", str(server_ca.write_trust(tmp_path / "trust.pem")))
        receiver = await Receiver().start(ssl_context=server_ca.server_context(require_client_from=client_ca))
        yield receiver, client_ca
        await receiver.stop()

    async def test_only_the_endpoint_with_the_right_certificate_gets_through(
            self, api: Api, dsn: str, db: psycopg.Connection, receiver: tuple[Receiver, CA]) -> None:
        """The endpoint with the customer's certificate is delivered; without one, or with one from another CA,
        the handshake is refused (tls_error) and nothing reaches the receiver. The key is never returned."""
        server, client_ca = receiver
        good, stranger = client_ca.issue("docextract", server=False), CA("other").issue("intruder", server=False)
        mtls = await register(api, server.url("/good"), auth={"type": "mtls", "certificate": good.certificate,
                                                              "key": good.key})
        await register(api, server.url("/none"))
        await register(api, server.url("/stranger"), auth={"type": "mtls", "certificate": stranger.certificate,
                                                           "key": stranger.key})
        publish(dsn, "webhook.test", webhook_test())
        results = await deliver(dsn, retry_delays=())
        assert sorted((r.claimed.url.rsplit("/", 1)[1], r.outcome.error_class or "ok") for r in results) == [
            ("good", "ok"), ("none", "tls_error"), ("stranger", "tls_error")], [r.outcome for r in results]
        assert [r.path for r in server.requests] == ["/good"]
        assert mtls["auth"] == {"type": "mtls"} and "PRIVATE KEY" not in str(mtls)
        assert "PRIVATE KEY" not in stored_row(db, mtls["id"])

    async def test_a_mismatched_key_or_an_expired_certificate_is_refused_at_registration(
            self, api: Api, receiver: tuple[Receiver, CA]) -> None:
        server, client_ca = receiver
        one, other = client_ca.issue("one", server=False), client_ca.issue("other", server=False)
        mismatched = await api.call("POST", "/v1/webhooks", json_body={"url": server.url("/a"), "auth": {
            "type": "mtls", "certificate": one.certificate, "key": other.key}})
        assert mismatched.status == 422 and "does not belong" in mismatched.body["error"]["message"]
        now = datetime.now(UTC)
        old = client_ca.issue("old", server=False, not_before=now - timedelta(days=9),
                              not_after=now - timedelta(days=1))
        expired = await api.call("POST", "/v1/webhooks", json_body={"url": server.url("/a"), "auth": {
            "type": "mtls", "certificate": old.certificate, "key": old.key}})
        assert expired.status == 422 and "the certificate expired at" in expired.body["error"]["message"]
        assert expired.body["error"]["field"] == "auth" and (await api.call("GET", "/v1/webhooks")).body["data"] == []
