"""DELIVERER_HTTP_CLIENT=aiohttp against the default client: the whole receiver matrix, the same outcomes."""

import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from aiohttp import web

from chaos.receivers import Misbehaving
from deliverer.delivery import send
from deliverer.delivery.aiohttp_send import AiohttpClient
from deliverer.dev.receiver import Receiver
from deliverer.security import ssrf
from deliverer.settings import ConfigError, Settings

LOOPBACK = ssrf.parse_networks("127.0.0.0/8")
TIMEOUT = 1.0
BODY = b'{"event": "webhook.test", "data": {}}'
HEADERS = {"Content-Type": "application/json", "User-Agent": "DocExtract-Webhooks/test", "X-DocExtract-Event-Id": "e"}


def _essence(outcome: send.Outcome) -> tuple[object, ...]:
    """What the log and the schedule use of an outcome (not its duration or message wording)."""
    return outcome.succeeded, outcome.http_status, outcome.error_class, outcome.retry_after, outcome.response_excerpt


@pytest.fixture
async def matrix() -> AsyncIterator[Misbehaving]:
    receivers = await Misbehaving(slow_seconds=3 * TIMEOUT).start()
    yield receivers
    await receivers.stop()


async def test_every_receiver_behaviour_gets_the_same_outcome_from_both_clients(matrix: Misbehaving) -> None:
    default, other = send.Client(allowed=LOOPBACK), AiohttpClient(allowed=LOOPBACK)
    try:
        for case in matrix.cases:
            # Twice each: the second request may go over a kept-alive connection (or find it closed).
            for _ in range(2):
                ours = await default.post(case.url, BODY, HEADERS, timeout=TIMEOUT)
                theirs = await other.post(case.url, BODY, HEADERS, timeout=TIMEOUT)
                assert _essence(theirs) == _essence(ours), case.name
                assert ours.error_class == case.error_class, case.name
    finally:
        await default.close()
        await other.close()


async def test_the_receiver_sees_the_same_request_from_both() -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def record(request: web.Request, n: int) -> web.StreamResponse:
        seen.append((request.method, dict(request.headers), await request.read()))
        return web.Response(text="ok", headers={"Connection": "close"} if n % 2 else {})
    receiver = Receiver()
    receiver.behave("/hook", record)
    await receiver.start()
    default, other = send.Client(allowed=LOOPBACK), AiohttpClient(allowed=LOOPBACK)
    try:
        for client in (default, other, default, other):  # and a keep-alive close between each
            assert (await client.post(receiver.url("/hook"), BODY, HEADERS, timeout=TIMEOUT)).succeeded
    finally:
        await default.close()
        await other.close()
        await receiver.stop()
    (ours, theirs) = seen[0], seen[1]
    assert ours[0] == theirs[0] == "POST" and ours[2] == theirs[2] == BODY
    assert {k.lower(): v for k, v in theirs[1].items()} == {k.lower(): v for k, v in ours[1].items()}


async def test_the_ssrf_guard_holds_for_names_and_literals() -> None:
    other = AiohttpClient(allowed=())
    try:
        for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/hook"):
            outcome = await other.post(url, BODY, HEADERS, timeout=TIMEOUT)
            assert outcome.error_class == "ssrf_blocked", url
    finally:
        await other.close()


async def test_tls_is_verified_and_trusted_certificates_pass() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    receiver = Receiver()
    await receiver.start(ssl_context=server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    other = AiohttpClient(allowed=LOOPBACK, ssl_context=trusting)
    try:
        assert (await other.post(receiver.url("/hook"), BODY, HEADERS, timeout=TIMEOUT)).succeeded
    finally:
        await other.close()
        await receiver.stop()


def test_the_aiohttp_client_refuses_an_egress_proxy() -> None:
    with pytest.raises(ConfigError, match="DELIVERER_EGRESS_PROXY needs DELIVERER_HTTP_CLIENT=default"):
        Settings(http_client="aiohttp", egress_proxy="http://proxy.example:3128").validated()
    with pytest.raises(ConfigError, match="DELIVERER_HTTP_CLIENT must be default or aiohttp"):
        Settings(http_client="httpx").validated()
