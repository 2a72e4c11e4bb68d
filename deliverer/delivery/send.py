"""One HTTP attempt: POST the signed body and classify what happened.

Nothing here raises for a receiver's behaviour: every response, timeout or
network error becomes an Outcome, because a receiver must never be able to
crash or stall a worker. The whole exchange, connecting included, is bounded by
the timeout, and at most ``EXCERPT_BYTES`` of a response body are ever read, so
an endless or huge body costs nothing but the connection, which is then closed.

With an egress proxy (DELIVERER_EGRESS_PROXY) each new connection is a tunnel
through it to the address the SSRF guard vetted (``deliverer.delivery.tunnel``);
TLS runs inside the tunnel, and the tunnel is kept alive like any connection.

Why a client of our own: a webhook attempt is always the same request (a POST
of a small body, no redirects, no cookies, no compression), and in
a profile of the drain benchmark aiohttp's general-purpose client was 40% of
the worker's CPU, more than signing, the database and the event loop together.
:class:`Client` does only what an attempt needs, over keep-alive connections
pooled per origin, and leaves the HTTP parsing, the part where hand-written
code goes wrong, to httptools (llhttp, the parser of Node.js).

Error classes recorded in the log:

| error_class        | what happened                                                     |
|--------------------|-------------------------------------------------------------------|
| http_3xx ... 5xx   | a complete non-2xx status line (redirects are never followed)     |
| timeout            | no complete response within the timeout (slow, or accepted and hung) |
| connect_error      | no connection: refused, unreachable, DNS                          |
| tls_error          | the TLS handshake failed, e.g. an untrusted certificate           |
| protocol_error     | connected, but the answer was not HTTP or the connection was cut  |
| ssrf_blocked       | the destination is not a public address (see deliverer.ssrf)      |
| proxy_error        | the egress proxy was unreachable, refused the tunnel or broke it  |
| invalid_url        | the stored URL cannot be requested                                |
"""

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httptools
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from deliverer.delivery import tunnel
from deliverer.facts import ErrorClass
from deliverer.security import client_certificates, ssrf
from deliverer.security.egress import Proxy

EXCERPT_BYTES = 1024
"""How much of a response body is kept in the log. The rest is never read."""

RETRY_AFTER_STATUSES = frozenset({429, 503})
"""Statuses whose Retry-After header is honoured (see deliverer.schedule.next_delay)."""

IDLE_SECONDS = 15.0
"""How long an unused keep-alive connection is kept open."""

MAX_HEAD_BYTES = 64 * 1024
"""Largest status line and headers read; a receiver sending more is cut off (the parser would keep it all)."""

MAX_CLIENT_CERTIFICATES = 1000
"""TLS contexts kept for mutual TLS, one per client certificate; a bound, as endpoints are few."""

ClientCertificate = tuple[str, str]
"""A client certificate (chain) and its key, PEM, for mutual TLS."""


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    duration_ms: float
    http_status: int | None = None
    error_class: ErrorClass | None = None
    error_message: str | None = None
    response_excerpt: str | None = None
    retry_after: float | None = None  # seconds a 429/503 asked us to wait, as sent; None when absent or unparsable


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date; None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


class _Failed(Exception):
    def __init__(self, error_class: ErrorClass, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


@dataclass(frozen=True)
class _Target:
    """What a URL means to the client, worked out once per URL."""

    origin: tuple[str, str, int]  # scheme, host, port: which connections may be shared
    host: str  # as connected to and verified (no brackets)
    port: int
    tls: bool
    head: bytes  # request line and Host header


def _target(url: str) -> _Target:
    try:
        parsed = URL(url)
    except (TypeError, ValueError) as exc:
        raise _Failed(ErrorClass.INVALID_URL, f"invalid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _Failed(ErrorClass.INVALID_URL, f"invalid URL: {url!r} is not an absolute http(s) URL")
    host, port = parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)
    authority = parsed.raw_authority.rpartition("@")[2]  # never send credentials in the Host header
    path = parsed.raw_path_qs or "/"
    if any(c in path + authority for c in "\r\n \t\0"):
        raise _Failed(ErrorClass.INVALID_URL, f"invalid URL: {url!r} has whitespace or control characters")
    head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii", "strict")
    return _Target((parsed.scheme, host, port), host, port, parsed.scheme == "https", head)


@dataclass(frozen=True)
class _Route:
    """How one request travels: to the target, on connections of pool ``pool``, with this TLS context."""

    target: _Target
    pool: tuple[object, ...]  # the origin, and the client identity when there is one
    ssl_context: ssl.SSLContext


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self, tls: bool = False) -> None:
        self.tls = tls
        self.proven = False  # a byte has come back on it: the receiver accepted the connection
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.framed = False  # Content-Length or chunked: the body does not end at the close
        self.received = False
        self.head_bytes = 0
        self.retry_after: bytes | None = None
        self.excerpt = bytearray()

    # The exchange --------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> asyncio.Future[None]:
        assert self.transport is not None
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return self.waiter

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _settle(self, error: BaseException | None = None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    # asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.close()  # bytes nobody asked for: the connection is out of step, never reuse it
            return
        self.received = self.proven = True
        if not self.headers_done:
            self.head_bytes += len(data)  # judged after parsing: this read may finish the headers
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.close()
            self._settle(_Failed(ErrorClass.PROTOCOL_ERROR, "bad response: the receiver switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self.close()
            self._settle(_Failed(ErrorClass.PROTOCOL_ERROR, f"bad response: not HTTP/1.x ({exc})"))
            return
        if not self.headers_done and self.head_bytes > MAX_HEAD_BYTES and self.waiter is not None:
            self.close()
            self._settle(_Failed(ErrorClass.PROTOCOL_ERROR, f"bad response: headers over {MAX_HEAD_BYTES} bytes"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None:
            return
        if self.headers_done and not self.framed and exc is None:
            self.complete = True  # a body delimited by the end of the connection has ended
            self._settle()
        elif self.tls and not self.proven:
            # With TLS 1.3 the client's side of the handshake is done before the server judges the
            # client certificate, so a refusal (none sent where one is required, or one it does not
            # trust) shows only as the new connection closing before any answer (the alert is often lost).
            self._settle(_Failed(ErrorClass.TLS_ERROR,
                                 "TLS failed: the receiver closed the new TLS connection before any response; "
                                 f"it may require a client certificate or refuse the one sent{_cause(exc)}"))
        elif not self.received:
            self._settle(_Lost(f"the connection was closed before any response{_cause(exc)}"))
        else:
            self._settle(_Failed(ErrorClass.PROTOCOL_ERROR,
                                 f"bad response: the connection was cut mid-response{_cause(exc)}"))

    # httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self.retry_after = value
        elif name in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = self.status >= 200  # 1xx answers are interim: the real one follows

    def on_body(self, body: bytes) -> None:
        room = EXCERPT_BYTES - len(self.excerpt)
        if room > 0:
            self.excerpt += body[:room]
        if len(self.excerpt) >= EXCERPT_BYTES and len(body) > room:
            # Enough kept; the rest is never read, and the connection goes with it.
            self.close()
            self._settle()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            self._reset()
            self.received = True
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # only known until the parser resets for the next message
        self._settle()


class _Lost(_Failed):
    """The connection ended before any byte of the response."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorClass.PROTOCOL_ERROR, f"bad response: {message}")


def _cause(exc: BaseException | None) -> str:
    return f": {type(exc).__name__}: {exc}" if exc is not None else ""


class Client:
    """POSTs webhook attempts over kept-alive connections, at most one exchange per connection at a time.

    Names resolve through the SSRF guard on every new connection (no DNS cache),
    and the connection goes to the vetted addresses; IP literals are vetted
    directly. TLS is always verified, against the server name. A request with a
    client certificate (mutual TLS) goes on connections of its own, made with a
    TLS context that presents it; connections are never shared between different
    client identities. With a ``proxy`` every new connection is a tunnel through it
    to a vetted address. ``resolver`` and the TLS contexts (``new_ssl_context``, which
    also makes the ones with client certificates) are for tests.
    """

    def __init__(self, *, allowed: tuple[ssrf.Network, ...] = (), resolver: AbstractResolver | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 new_ssl_context: Callable[[], ssl.SSLContext] = ssl.create_default_context,
                 max_idle: int = 200, proxy: Proxy | None = None) -> None:
        self.allowed = allowed
        self.proxy = proxy
        self.resolver = ssrf.GuardedResolver(allowed, inner=resolver or ThreadedResolver())
        self.ssl_context = ssl_context or new_ssl_context()
        self.new_ssl_context = new_ssl_context
        self._client_contexts: dict[str, ssl.SSLContext] = {}
        self.max_idle = max_idle
        self._idle: dict[tuple[object, ...], list[_Connection]] = {}
        self._idle_count = 0
        self._targets: dict[str, _Target] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.connections_made = 0  # for tests: how many were opened, i.e. how often keep-alive did not apply

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()
        self._idle_count = 0
        await self.resolver.close()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float,
                   client_certificate: ClientCertificate | None = None) -> Outcome:
        started = time.perf_counter()
        try:
            target = self._targets.get(url) or self._remember(url)
            request = b"".join((target.head, f"Content-Length: {len(body)}\r\n".encode(), *(
                f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()), b"\r\n"))
            route = self._route(target, client_certificate)
            async with asyncio.timeout(timeout):
                conn = await self._exchange(route, request, body)
        except TimeoutError:
            return _failure(started, ErrorClass.TIMEOUT, f"no complete response within {timeout:g} s")
        except _Failed as exc:
            return _failure(started, exc.error_class, str(exc))
        except UnicodeEncodeError as exc:
            return _failure(started, ErrorClass.OTHER, f"a header is not Latin-1: {exc}")
        duration_ms = (time.perf_counter() - started) * 1000
        status, excerpt = conn.status, loggable(conn.excerpt.decode("utf-8", "replace")) or None
        retry_after = conn.retry_after
        self._release(route, conn)
        if 200 <= status < 300:
            return Outcome(True, duration_ms, http_status=status, response_excerpt=excerpt)
        wait = (parse_retry_after(retry_after.decode("latin-1")) if retry_after is not None
                and status in RETRY_AFTER_STATUSES else None)
        return Outcome(False, duration_ms, http_status=status, error_class=ErrorClass.for_status(status),
                       error_message=f"HTTP {status}", response_excerpt=excerpt, retry_after=wait)

    def _remember(self, url: str) -> _Target:
        target = _target(url)
        if len(self._targets) >= 10_000:
            self._targets.clear()  # a bound, not a cache policy: URLs are few and parsing is cheap
        self._targets[url] = target
        return target

    def _route(self, target: _Target, client_certificate: ClientCertificate | None) -> "_Route":
        if client_certificate is None or not target.tls:
            return _Route(target, target.origin, self.ssl_context)
        identity = client_certificates.fingerprint(*client_certificate)
        context = self._client_contexts.get(identity)
        if context is None:
            try:
                context = client_certificates.load(self.new_ssl_context(), *client_certificate)
            except ssl.SSLError as exc:
                raise _Failed(ErrorClass.TLS_ERROR,
                              f"the endpoint's client certificate cannot be used: {exc}") from None
            if len(self._client_contexts) >= MAX_CLIENT_CERTIFICATES:
                self._client_contexts.clear()
            self._client_contexts[identity] = context
        return _Route(target, (*target.origin, identity), context)

    async def _exchange(self, route: "_Route", request: bytes, body: bytes) -> _Connection:
        conn = self._reuse(route)
        if conn is not None:
            try:
                await self._await(conn, conn.send(request, body))
                return conn
            except _Lost:
                # The receiver closed this idle connection as we sent on it (servers time out
                # idle keep-alive connections, often after 2 to 5 s). Nothing of the request was
                # answered; webhooks are delivered at least once, so it goes again on a fresh one.
                pass
        conn = await self._connect(route)
        await self._await(conn, conn.send(request, body))
        return conn

    @staticmethod
    async def _await(conn: _Connection, waiter: asyncio.Future[None]) -> None:
        try:
            await waiter
        except BaseException:
            conn.close()  # timed out or cancelled mid-exchange: its state is unknown
            raise

    def _reuse(self, route: "_Route") -> _Connection | None:
        pool = self._idle.get(route.pool)
        while pool:
            conn = pool.pop()
            self._idle_count -= 1
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _release(self, route: "_Route", conn: _Connection) -> None:
        if not conn.reusable or self._idle_count >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(route.pool, []).append(conn)
        self._idle_count += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS / 3, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than IDLE_SECONDS; runs while any are idle."""
        self._sweeper = None
        cutoff = time.monotonic() - IDLE_SECONDS
        for origin, pool in list(self._idle.items()):
            kept = [c for c in pool if c.idle_since > cutoff and not c.closed]
            for conn in pool:
                if conn.idle_since <= cutoff:
                    conn.close()
            self._idle_count -= len(pool) - len(kept)
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]
        if self._idle_count:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS / 3, self._sweep)

    async def _connect(self, route: "_Route") -> _Connection:
        target = route.target
        address = ssrf.literal(target.host)
        try:
            if address is not None:
                ssrf.check_address(address, self.allowed)
                hosts = [str(address)]
            else:
                hosts = [r["host"] for r in await self.resolver.resolve(target.host, target.port, socket.AF_UNSPEC)]
        except ssrf.SsrfBlocked as exc:
            raise _Failed(ErrorClass.SSRF_BLOCKED, str(exc)) from None
        except OSError as exc:
            raise _Failed(ErrorClass.CONNECT_ERROR, f"could not resolve {target.host}: {exc}") from None
        loop = asyncio.get_running_loop()
        error: _Failed | None = None
        for host in hosts:
            context, name = (route.ssl_context, target.host) if target.tls else (None, None)
            try:
                if self.proxy is None:
                    _, conn = await loop.create_connection(lambda: _Connection(target.tls), host, target.port,
                                                           ssl=context, server_hostname=name)
                else:
                    sock = await tunnel.open_tunnel(self.proxy, host, target.port)
                    _, conn = await loop.create_connection(lambda: _Connection(target.tls), sock=sock,
                                                           ssl=context, server_hostname=name)
            except tunnel.TunnelError as exc:
                error = _Failed(ErrorClass.PROXY_ERROR, str(exc))
                continue
            except ssl.SSLError as exc:
                raise _Failed(ErrorClass.TLS_ERROR, f"TLS failed: {exc}") from None
            except OSError as exc:
                error = _Failed(ErrorClass.CONNECT_ERROR, f"could not connect to {target.host}:{target.port}: {exc}")
                continue
            self.connections_made += 1
            return conn
        raise error or _Failed(ErrorClass.CONNECT_ERROR, f"{target.host} has no address")


def loggable(text: str) -> str:
    """``text`` as PostgreSQL can store it: receivers answer anything, and text columns
    (and JSON) cannot hold NUL characters or unpaired surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def _failure(started: float, error_class: ErrorClass, message: str) -> Outcome:
    return Outcome(False, (time.perf_counter() - started) * 1000, error_class=error_class,
                   error_message=loggable(message[:500]))

