"""Receivers on loopback that misbehave on purpose, in every way the receiver matrix lists.

The recording sink every scenario delivers to is deliverer.dev.receiver's
Receiver, the one the demo and the tests use; here it serves the HTTP-level
misbehaviours as behaviours, next to raw TCP servers for what is below HTTP.
"""

import asyncio
import contextlib
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trustme
from aiohttp import web

from deliverer.dev.receiver import Behaviour, Receiver


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
        self.body_cut_off: Counter[str] = Counter()  # responses whose body the client stopped reading
        self.hanging = 0  # connections accepted and held open right now
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._release = asyncio.Event()
        self.cases: list[Case] = []
        self.http = Receiver(keep_content=False)
        self.tls = Receiver(keep_content=False)

    @property
    def hits(self) -> Counter[str]:
        """Requests that reached an HTTP path, per path."""
        return self.http.arrivals + self.tls.arrivals

    async def start(self) -> "Misbehaving":
        for status in (500, 503, 429, 404, 410):
            self.http.behave(f"/status/{status}", self._status(status))
        self.http.behave("/redirect", self._redirect)
        self.http.behave("/slow", self._slow)
        self.http.behave("/endless", self._big_body)
        self.http.behave("/huge", self._big_body)
        await self.http.start()
        self._closers.append(self.http.stop)
        base = self.http.base_url

        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_context)
        await self.tls.start(ssl_context=server_context)
        self._closers.append(self.tls.stop)

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
            Case("TLS, untrusted certificate", self.tls.url("/hook"), "tls_error", None),
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

    @staticmethod
    def _status(status: int) -> Behaviour:
        async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=status, text="no", headers=headers)
        return behaviour

    @staticmethod
    async def _redirect(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=301, headers={"Location": "/redirect-target"})

    async def _slow(self, request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(self.slow_seconds)  # the misbehaviour itself: answering after the deliverer's timeout
        return web.Response(text="OK, but too late")

    async def _big_body(self, request: web.Request, n: int) -> web.StreamResponse:
        path = request.path
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
