"""Receivers on loopback: a fast recording sink, and servers that misbehave on purpose.

The sink answers 200 on every path unless a path is given a behaviour, and
records each request by (path, event id, delivery id, attempt), which is all
the suite needs to compare what arrived with what was published.
"""

import asyncio
import contextlib
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trustme
from aiohttp import web


@dataclass(frozen=True)
class Receipt:
    path: str
    event_id: str
    delivery_id: str
    attempt: int
    status: int


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


async def _run_app(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]


@dataclass
class Sink:
    """A real aiohttp server on loopback that records every request it answers."""

    base_url: str = ""
    receipts: list[Receipt] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    begun: Counter[str] = field(default_factory=Counter)  # requests that arrived, answered or not yet
    _counts: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None

    async def start(self) -> "Sink":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, port = await _run_app(app)
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def behave(self, path: str, behaviour: Behaviour) -> None:
        self.behaviours[path] = behaviour

    def to(self, path: str) -> list[Receipt]:
        return [r for r in self.receipts if r.path == path]

    def delivered(self) -> set[tuple[str, str]]:
        """(event id, path) of every request answered with a 2xx."""
        return {(r.event_id, r.path) for r in self.receipts if 200 <= r.status < 300}

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        path = request.path
        self._counts[path] += 1
        self.begun[path] += 1
        self.arrived.set()
        behaviour = self.behaviours.get(path)
        response = web.Response(text="OK") if behaviour is None else await behaviour(request, self._counts[path])
        headers = request.headers
        self.receipts.append(Receipt(path, headers.get("X-DocExtract-Event-Id", ""),
                                     headers.get("X-DocExtract-Delivery-Id", ""),
                                     int(headers.get("X-DocExtract-Delivery-Attempt", "0")), response.status))
        self.arrived.set()
        return response


def free_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Case:
    """One misbehaviour, where it is served, and what the deliverer must record for it."""

    name: str
    url: str
    error_class: str | None  # None: delivered
    http_status: int | None
    retry_after: float | None = None  # what the receiver asks for, in seconds


class Misbehaving:
    """Every receiver misbehaviour of the matrix, each on its own path or port.

    ``slow_seconds`` must exceed the deliverer's HTTP timeout. Requests that
    reach the plain-HTTP paths are counted per path, so a test can show that
    the target of a redirect was never requested.
    """

    BODY_CHUNK = b"x" * 65536
    HUGE_BODY = 64 * 1024 * 1024

    def __init__(self, slow_seconds: float) -> None:
        self.slow_seconds = slow_seconds
        self.hits: Counter[str] = Counter()
        self.body_cut_off: Counter[str] = Counter()  # responses whose body the client stopped reading
        self.hanging = 0  # connections accepted and held open right now
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._release = asyncio.Event()
        self.cases: list[Case] = []

    async def start(self) -> "Misbehaving":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._http)
        runner, port = await _run_app(app)
        self._closers.append(runner.cleanup)
        base = f"http://127.0.0.1:{port}"

        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_context)
        tls_app = web.Application()
        tls_app.router.add_route("*", "/{tail:.*}", self._http)
        tls_runner, tls_port = await _run_app(tls_app, server_context)
        self._closers.append(tls_runner.cleanup)

        hang_port = await self._raw(self._accept_then_hang)
        reset_port = await self._raw(self._reset_mid_response)
        garbage_port = await self._raw(self._garbage)

        self.cases = [
            Case("500", f"{base}/status/500", "http_5xx", 500),
            Case("503 Retry-After 120 s", f"{base}/status/503?retry_after=120", "http_5xx", 503, 120),
            Case("503 Retry-After 2 s", f"{base}/status/503?retry_after=2", "http_5xx", 503, 2),
            Case("429 Retry-After 1 day", f"{base}/status/429?retry_after=86400", "http_4xx", 429, 86400),
            Case("429", f"{base}/status/429", "http_4xx", 429),
            Case("404", f"{base}/status/404", "http_4xx", 404),
            Case("410", f"{base}/status/410", "http_4xx", 410),
            Case("301 not followed", f"{base}/redirect", "http_3xx", 301),
            Case("slower than the timeout", f"{base}/slow", "timeout", None),
            Case("accept then hang", f"http://127.0.0.1:{hang_port}/hook", "timeout", None),
            Case("connection refused", f"http://127.0.0.1:{free_port()}/hook", "connect_error", None),
            Case("reset mid-response", f"http://127.0.0.1:{reset_port}/hook", "protocol_error", None),
            Case("endless body, 200", f"{base}/endless", None, 200),
            Case("huge body, 500", f"{base}/huge", "http_5xx", 500),
            Case("non-HTTP garbage", f"http://127.0.0.1:{garbage_port}/hook", "protocol_error", None),
            Case("TLS, untrusted certificate", f"https://127.0.0.1:{tls_port}/hook", "tls_error", None),
        ]
        return self

    async def stop(self) -> None:
        self._release.set()
        for close in reversed(self._closers):
            await close()

    async def _raw(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)

        async def close() -> None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)
        self._closers.append(close)
        return int(server.sockets[0].getsockname()[1])

    async def _accept_then_hang(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hanging += 1
        try:
            await self._release.wait()  # never reads, never answers
        finally:
            self.hanging -= 1
            writer.close()

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")

    async def _reset_mid_response(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\npartial")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        sock = writer.get_extra_info("socket")
        # Linger 0 makes close() send a RST instead of a FIN: the connection is reset, not ended.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async def _garbage(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._read_head(reader)
        writer.write(b"\x00\x16\x03\x01 SSH-2.0-OpenSSH_9.6 this is not HTTP\r\n\r\n\xff\xfe")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _http(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        path = request.path
        self.hits[path] += 1
        if path.startswith("/status/"):
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=int(path.rsplit("/", 1)[1]), text="no", headers=headers)
        if path == "/redirect":
            return web.Response(status=301, headers={"Location": "/redirect-target"})
        if path == "/slow":
            await asyncio.sleep(self.slow_seconds)
            return web.Response(text="OK, but too late")
        if path in ("/endless", "/huge"):
            return await self._big_body(request, path)
        return web.Response(text="OK")

    async def _big_body(self, request: web.Request, path: str) -> web.StreamResponse:
        response = web.StreamResponse(status=200 if path == "/endless" else 500)
        if path == "/huge":
            response.content_length = self.HUGE_BODY
        await response.prepare(request)
        written = 0
        try:
            while path == "/endless" or written < self.HUGE_BODY:
                await response.write(self.BODY_CHUNK)
                written += len(self.BODY_CHUNK)
        except (ConnectionError, asyncio.CancelledError):
            self.body_cut_off[path] += 1
            raise
        return response
