"""Webhooks through a real egress proxy on loopback: tinyproxy (HTTP CONNECT) and microsocks (SOCKS5).

Each proxy logs the tunnels it opens: that is how these tests see that a request
crossed it, to which address, and that a refused destination never reached it.
"""

import re
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from aiohttp import web
from aiohttp.resolver import ThreadedResolver

import outbox
from deliverer.delivery import send
from deliverer.delivery.worker import Worker
from deliverer.security import egress, ssrf
from tests.support import Receiver, add_endpoint, settings_for, webhook_test
from tests.support.certificates import CA
from tests.support.proxies import microsocks, tinyproxy

LOOPBACK = ssrf.parse_networks("127.0.0.0/8")
NAMES = {"hooks.test": "127.0.0.1", "internal.test": "10.1.2.3"}


class Names(ThreadedResolver):
    """DNS for the tests' names: hooks.test is the receiver on loopback, internal.test a private address."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list:  # type: ignore[override]
        return await super().resolve(NAMES.get(host, host), port, family)


@pytest.fixture
async def tls_receiver() -> AsyncIterator[tuple[int, CA, list[str]]]:
    """An HTTPS receiver for hooks.test on loopback, with a certificate from a CA of its own; yields its port,
    the CA, and the Host header of each request it got."""
    ca = CA("local receiver CA")
    seen: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(text="OK")
    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ca.server_context("hooks.test")).start()
    yield runner.addresses[0][1], ca, seen
    await runner.cleanup()


def client_through(proxy_url: str, ca: CA | None = None) -> send.Client:
    return send.Client(allowed=LOOPBACK, resolver=Names(), proxy=egress.parse(proxy_url),
                       new_ssl_context=ca.trusting if ca else ssl.create_default_context)


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tunnels(log: str) -> list[str]:
    """The destinations a proxy opened tunnels to, from its log."""
    return re.findall(r"CONNECT (\S+) HTTP/1\.1", log) + re.findall(r"connected to (\S+)", log)


async def post(client: send.Client, url: str) -> send.Outcome:
    return await client.post(url, b'{"event":"webhook.test"}', {"Content-Type": "application/json"}, timeout=5)


@pytest.mark.parametrize("start", [tinyproxy, microsocks], ids=["http-connect", "socks5"])
async def test_tls_runs_through_one_kept_alive_tunnel_to_the_vetted_address(
        start: object, tmp_path: Path, tls_receiver: tuple[int, CA, list[str]]) -> None:
    """Three HTTPS requests to hooks.test cross the proxy in one tunnel, opened to the address the guard
    vetted (never the name); TLS inside it is verified against hooks.test, with credentials on the proxy."""
    port, ca, seen = tls_receiver
    with start(tmp_path, credentials=("hooks", "s3cret")) as proxy:  # type: ignore[operator]
        client = client_through(proxy.url, ca)
        try:
            outcomes = [await post(client, f"https://hooks.test:{port}/hook") for _ in range(3)]
        finally:
            await client.close()
        log = proxy.log()
    assert all(o.succeeded for o in outcomes), outcomes
    assert seen == [f"hooks.test:{port}"] * 3
    assert tunnels(log) == [f"127.0.0.1:{port}"], log
    assert client.connections_made == 1


async def test_tls_through_the_tunnel_is_still_verified(tmp_path: Path, tls_receiver: tuple[int, CA, list[str]]
                                                        ) -> None:
    """A certificate the deliverer does not trust is a tls_error through the proxy as without it."""
    port, _, seen = tls_receiver
    with tinyproxy(tmp_path) as proxy:
        client = client_through(proxy.url)  # the system trust store: not the receiver's CA
        try:
            outcome = await post(client, f"https://hooks.test:{port}/hook")
        finally:
            await client.close()
    assert outcome.error_class == "tls_error", outcome
    assert seen == []


@pytest.mark.parametrize("start", [tinyproxy, microsocks], ids=["http-connect", "socks5"])
@pytest.mark.parametrize("url", ["http://10.1.2.3/hook", "http://internal.test/hook", "http://[::1]:80/hook"])
async def test_a_private_destination_is_refused_before_the_proxy_is_asked(start: object, url: str,
                                                                           tmp_path: Path) -> None:
    """The SSRF guard vets the destination itself: a private address, or a name resolving to one, is
    ssrf_blocked and the proxy never hears of it."""
    with start(tmp_path) as proxy:  # type: ignore[operator]
        client = send.Client(allowed=ssrf.parse_networks("127.0.0.0/8"), resolver=Names(),
                             proxy=egress.parse(proxy.url))
        try:
            outcome = await post(client, url)
        finally:
            await client.close()
        log = proxy.log()
    assert outcome.error_class == "ssrf_blocked", outcome
    assert tunnels(log) == [], log


async def test_proxy_failures_are_proxy_errors_without_credentials(tmp_path: Path) -> None:
    """A proxy that refuses the tunnel (its port rules, wrong credentials), refuses connections or cannot
    reach the destination: each is a proxy_error naming the proxy, never its password."""
    async with Receiver() as receiver:
        url = receiver.url("/hook")
        with tinyproxy(tmp_path, credentials=("hooks", "s3cret"), connect_ports=(443,)) as http, \
                microsocks(tmp_path, credentials=("hooks", "s3cret")) as socks:
            cases = {
                "port not allowed": (http.url, url),
                "wrong password": (http.url.replace("s3cret", "wrong-pw"), url),
                "socks wrong password": (socks.url.replace("s3cret", "wrong-pw"), url),
                "destination closed": (socks.url, "http://127.0.0.1:9/hook"),
                "no proxy there": (f"http://hooks:s3cret@127.0.0.1:{closed_port()}", url),
            }
            outcomes = {}
            for name, (proxy_url, target) in cases.items():
                client = send.Client(allowed=LOOPBACK, proxy=egress.parse(proxy_url))
                try:
                    outcomes[name] = await post(client, target)
                finally:
                    await client.close()
        assert receiver.requests == []
    for name, outcome in outcomes.items():
        assert outcome.error_class == "proxy_error", (name, outcome)
        assert "s3cret" not in (outcome.error_message or "") and "wrong-pw" not in (outcome.error_message or "")
    assert "403" in (outcomes["port not allowed"].error_message or "")
    assert "Unauthorized" in (outcomes["wrong password"].error_message or "")  # tinyproxy answers 401, not 407
    assert "refused our user name and password" in (outcomes["socks wrong password"].error_message or "")


async def test_the_worker_delivers_through_deliverer_egress_proxy_and_retries_a_proxy_error(
        dsn: str, db: psycopg.Connection, tmp_path: Path) -> None:
    """With DELIVERER_EGRESS_PROXY set, `run`'s attempts cross the proxy; while the proxy refuses, the
    attempt is recorded as proxy_error and scheduled again like any failure."""
    async with Receiver() as receiver:
        add_endpoint(db, receiver, "/hook")
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        port = int(receiver.base_url.rsplit(":", 1)[1])
        with tinyproxy(tmp_path, connect_ports=(443,)) as refusing:
            async with Worker(settings_for(dsn, egress_proxy=refusing.url, retry_delays=(0,))) as worker:
                [failed] = await worker.run_once()
        assert failed.outcome.error_class == "proxy_error" and failed.retry_after is not None, failed.outcome
        with tinyproxy(tmp_path) as proxy:
            async with Worker(settings_for(dsn, egress_proxy=proxy.url)) as worker:
                [delivered] = await worker.run_once()
            log = proxy.log()
        assert delivered.outcome.succeeded, delivered.outcome
        assert tunnels(log) == [f"127.0.0.1:{port}"], log
        assert [r.signature_ok for r in receiver.requests] == [True]
    rows = db.execute("SELECT error_class FROM delivery_log WHERE kind = 'attempt_finished' ORDER BY seq").fetchall()
    assert rows == [("proxy_error",), (None,)]
