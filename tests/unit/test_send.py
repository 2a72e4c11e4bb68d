"""The deliverer's HTTP client against real servers on loopback: keep-alive, framing, TLS, and what it never reuses.

The receiver matrix (tests/system/test_chaos_receiver_matrix.py) covers how each kind
of misbehaving receiver is classified; these tests cover the connection
handling that matrix cannot see.
"""

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme
import uvloop
from aiohttp import web
from aiohttp.resolver import ThreadedResolver

from deliverer.delivery import send
from deliverer.security import ssrf
from tests.support.certificates import CA

LOOPBACK = ssrf.parse_networks("127.0.0.0/8")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A TCP server on loopback that hands each connection to ``handler`` with the connection's 1-based number."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> "RawServer":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook?x=1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


@pytest.fixture
async def client() -> AsyncIterator[send.Client]:
    client = send.Client(allowed=LOOPBACK)
    yield client
    await client.close()


async def post(client: send.Client, url: str, body: bytes = b'{"event":"webhook.test"}') -> send.Outcome:
    return await client.post(url, body, {"Content-Type": "application/json", "X-DocExtract-Event-Id": "evt_1"},
                             timeout=2)


async def test_the_request_is_exactly_what_was_signed(client: send.Client) -> None:
    """Request line, Host with port, Content-Length and the body bytes as given, on the wire."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()

    body = '{"event":"job.completed","data":{"name":"façade ✓"}}'.encode()
    async with RawServer(answer) as server:
        outcome = await post(client, server.url, body)
    assert outcome.succeeded and outcome.http_status == 200 and outcome.response_excerpt == "OK"
    head, _, sent = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    port = server.url.split(":")[2].split("/")[0]
    assert lines[0] == b"POST /hook?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}".encode() in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert b"X-DocExtract-Event-Id: evt_1" in lines
    assert sent == body


async def test_connections_are_kept_alive_and_reused(client: send.Client) -> None:
    async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await server.read_request(reader)
            writer.write(OK)
            await writer.drain()

    async with RawServer(answer_all) as server:
        outcomes = [await post(client, server.url) for _ in range(20)]
        concurrent = await asyncio.gather(*(post(client, server.url) for _ in range(5)))
    assert all(o.succeeded for o in [*outcomes, *concurrent])
    assert server.connections == client.connections_made <= 5, "sequential requests share one connection"
    assert len(server.requests) == 25


async def test_an_idle_connection_the_receiver_dropped_is_retried_on_a_new_one(client: send.Client) -> None:
    """The receiver closes its idle keep-alive connection as our next request goes out: it is sent again on
    a fresh connection instead of failing the attempt (nothing of it was answered)."""
    async def drop_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        if n == 1:
            await server.read_request(reader)  # the second request on this connection: closed unanswered
            writer.transport.abort()

    async with RawServer(drop_second) as server:
        first, second = await post(client, server.url), await post(client, server.url)
    assert first.succeeded and second.succeeded, second
    assert server.connections == 2 and len(server.requests) == 3


async def test_a_fresh_connection_closed_unanswered_is_a_protocol_error(client: send.Client) -> None:
    """The retry is only for reused connections: a new one that is dropped is the receiver's failure."""
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.transport.abort()

    async with RawServer(drop) as server:
        outcome = await post(client, server.url)
    assert outcome.error_class == "protocol_error" and len(server.requests) == 1


@pytest.mark.parametrize("response", [
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n3\r\n!!!\r\n0\r\n\r\n",
                 id="chunked"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nOK!!!", id="interim-100"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nOK!!!", id="connection-close"),
    pytest.param(b"HTTP/1.0 200 OK\r\n\r\nOK!!!", id="http-1.0-until-close"),
])
async def test_response_framings(client: send.Client, response: bytes) -> None:
    """Chunked, interim 1xx, Connection: close and close-delimited bodies all read correctly; only the
    kept-alive ones are reused."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await server.read_request(reader)
            writer.write(response)
            await writer.drain()
            if b"close" in response or b"HTTP/1.0" in response:
                return

    async with RawServer(answer) as server:
        outcomes = [await post(client, server.url) for _ in range(2)]
    assert [(o.http_status, o.response_excerpt) for o in outcomes] == [(200, "OK!!!")] * 2
    keeps_alive = b"close" not in response and b"HTTP/1.0" not in response
    assert server.connections == (1 if keeps_alive else 2)


async def test_a_timed_out_connection_is_never_reused(client: send.Client) -> None:
    """The late answer to a timed-out request must not be read as the answer to the next one."""
    answered_late = asyncio.Event()

    async def late_then_fine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await server.read_request(reader)
            if n == 1:
                await asyncio.sleep(0.5)  # the behaviour under test: answering after the client's 0.2 s timeout
                try:
                    writer.write(b"HTTP/1.1 500 Late\r\nContent-Length: 0\r\n\r\n")
                finally:
                    answered_late.set()
            else:
                writer.write(OK)
            await writer.drain()

    async with RawServer(late_then_fine) as server:
        timed_out = await client.post(server.url, b"{}", {}, timeout=0.2)
        await asyncio.wait_for(answered_late.wait(), 10)  # the late answer is on the wire before the next request
        after = await post(client, server.url)
    assert timed_out.error_class == "timeout"
    assert after.succeeded and server.connections == 2


async def test_a_body_cut_short_is_a_protocol_error(client: send.Client) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    async with RawServer(short) as server:
        outcome = await post(client, server.url)
    assert outcome.error_class == "protocol_error" and "mid-response" in (outcome.error_message or "")


async def test_endless_headers_are_cut_off(client: send.Client) -> None:
    """A receiver that never ends its headers costs 64 KiB, not memory until the timeout."""
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        while True:
            writer.write(b"a" * 65536)
            await writer.drain()

    async with RawServer(endless) as server:
        outcome = await post(client, server.url)
    assert outcome.error_class == "protocol_error" and "headers over" in (outcome.error_message or "")  # not timeout


async def test_tls_is_verified_against_the_name_and_kept_alive() -> None:
    """HTTPS to a name: the certificate must be for that name and signed by a trusted CA; the
    connection is reused. The same server is refused when its CA is not trusted."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.test").configure_cert(server_context)
    app = web.Application()
    seen: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(text="OK")
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]

    class Loopback(ThreadedResolver):
        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list:  # type: ignore[override]
            return await super().resolve("127.0.0.1", port, family)

    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    good = send.Client(allowed=LOOPBACK, resolver=Loopback(), ssl_context=trusting)
    untrusted = send.Client(allowed=LOOPBACK, resolver=Loopback())
    try:
        outcomes = [await post(good, f"https://hooks.test:{port}/hook") for _ in range(3)]
        wrong_name = await post(good, f"https://127.0.0.1:{port}/hook")
        refused = await post(untrusted, f"https://hooks.test:{port}/hook")
    finally:
        await good.close()
        await untrusted.close()
        await runner.cleanup()
    assert all(o.succeeded for o in outcomes) and good.connections_made == 1
    assert seen == [f"hooks.test:{port}"] * 3
    assert wrong_name.error_class == "tls_error" and refused.error_class == "tls_error"


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "not a url", "http://exa mple.com/hook"])
async def test_urls_that_cannot_be_requested(client: send.Client, url: str) -> None:
    outcome = await post(client, url)
    assert outcome.error_class == "invalid_url"


@pytest.mark.parametrize("scenario", [
    test_the_request_is_exactly_what_was_signed, test_connections_are_kept_alive_and_reused,
    test_an_idle_connection_the_receiver_dropped_is_retried_on_a_new_one, test_a_timed_out_connection_is_never_reused,
    test_a_body_cut_short_is_a_protocol_error,
])
def test_on_uvloop(scenario: Callable[[send.Client], Awaitable[None]]) -> None:
    """`deliverer run` sends on uvloop, whose transports differ from asyncio's: the same scenarios there."""
    async def main() -> None:
        client = send.Client(allowed=LOOPBACK)
        try:
            await scenario(client)
        finally:
            await client.close()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
        runner.run(test_tls_is_verified_against_the_name_and_kept_alive())


class TestMutualTls:
    """A receiver that requires a client certificate from its own CA, on loopback."""

    @pytest.fixture
    async def receiver(self) -> AsyncIterator[tuple[str, CA, list[str]]]:
        """The URL of an HTTPS server requiring a client certificate from the returned CA; and, per request,
        the common name of the certificate it came with."""
        server_ca, client_ca = CA("server CA"), CA("client CA")
        context = server_ca.server_context("127.0.0.1", require_client_from=client_ca)
        seen: list[str] = []

        async def hook(request: web.Request) -> web.Response:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            seen.append(dict(pair[0] for pair in peer["subject"])["commonName"] if peer else "")
            return web.Response(text="OK")
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        self.trust = server_ca.trusting
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/hook", client_ca, seen
        await runner.cleanup()

    async def test_refused_without_the_right_client_certificate(
            self, receiver: tuple[str, CA, list[str]]) -> None:
        """No certificate, or one from another CA: the handshake is refused (tls_error) and nothing reaches
        the receiver's handler; the CA's certificate is accepted."""
        url, client_ca, seen = receiver
        stranger = CA("another CA").issue("intruder", server=False)
        good = client_ca.issue("customer-a", server=False)
        client = send.Client(allowed=LOOPBACK, new_ssl_context=self.trust)
        try:
            without = await post(client, url)
            wrong = await client.post(url, b"{}", {}, timeout=2,
                                      client_certificate=(stranger.certificate, stranger.key))
            right = await client.post(url, b"{}", {}, timeout=2, client_certificate=(good.certificate, good.key))
        finally:
            await client.close()
        assert (without.error_class, wrong.error_class) == ("tls_error", "tls_error"), (without, wrong)
        assert right.succeeded, right
        assert seen == ["customer-a"]

    async def test_connections_are_kept_per_client_identity(self, receiver: tuple[str, CA, list[str]]) -> None:
        """Two endpoints at one origin with different certificates never share a connection; each keeps its own
        alive."""
        url, client_ca, seen = receiver
        a, b = client_ca.issue("customer-a", server=False), client_ca.issue("customer-b", server=False)
        client = send.Client(allowed=LOOPBACK, new_ssl_context=self.trust)
        try:
            outcomes = [await client.post(url, b"{}", {}, timeout=2, client_certificate=(c.certificate, c.key))
                        for c in (a, b, a, b)]
        finally:
            await client.close()
        assert all(o.succeeded for o in outcomes), outcomes
        assert seen == ["customer-a", "customer-b", "customer-a", "customer-b"]
        assert client.connections_made == 2
