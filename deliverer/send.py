"""One HTTP attempt: POST the signed body and classify what happened.

Nothing here raises for a receiver's behaviour: every response, timeout or
network error becomes an Outcome, because a receiver must never be able to
crash or stall a worker. The whole exchange, body included, is bounded by the
timeout, and at most ``EXCERPT_BYTES`` of a response body are ever read, so an
endless or huge body costs nothing but the connection, which is then closed.

Error classes recorded in the log:

| error_class        | what happened                                                     |
|--------------------|-------------------------------------------------------------------|
| http_3xx ... 5xx   | a complete non-2xx status line (redirects are never followed)     |
| timeout            | no complete response within the timeout (slow, or accepted and hung) |
| connect_error      | no connection: refused, unreachable, DNS                          |
| tls_error          | the TLS handshake failed, e.g. an untrusted certificate           |
| protocol_error     | connected, but the answer was not HTTP or the connection was cut  |
| ssrf_blocked       | the destination is not a public address (see deliverer.ssrf)      |
"""

import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from deliverer import ssrf

EXCERPT_BYTES = 1024
"""How much of a response body is kept in the log. The rest is never read."""

RETRY_AFTER_STATUSES = frozenset({429, 503})
"""Statuses whose Retry-After header is honoured (see deliverer.schedule.next_delay)."""


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    duration_ms: float
    http_status: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    response_excerpt: str | None = None
    retry_after: float | None = None  # seconds a 429/503 asked us to wait, as sent; None when absent or unparsable


def new_session(*, max_connections: int, allowed: tuple[ssrf.Network, ...] = ()) -> aiohttp.ClientSession:
    """Connections resolve names through the SSRF guard on every new connection (no DNS cache),
    so each is made to addresses vetted just before."""
    connector = aiohttp.TCPConnector(limit=max_connections, use_dns_cache=False, keepalive_timeout=30,
                                     resolver=ssrf.GuardedResolver(allowed))
    # Cookies would leak state between endpoints and orgs.
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def _read_excerpt(response: aiohttp.ClientResponse) -> str:
    chunks: list[bytes] = []
    size = 0
    while size < EXCERPT_BYTES:
        chunk = await response.content.read(EXCERPT_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


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


def _failure(started: float, error_class: str, message: str) -> Outcome:
    return Outcome(False, (time.perf_counter() - started) * 1000, error_class=error_class,
                   error_message=message[:500])


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], *,
               timeout: float, allowed: tuple[ssrf.Network, ...] = ()) -> Outcome:
    started = time.perf_counter()
    try:
        ssrf.check_host(URL(url).host or "", allowed)
    except ssrf.SsrfBlocked as exc:
        return _failure(started, "ssrf_blocked", str(exc))
    except ValueError as exc:
        return _failure(started, "invalid_url", f"invalid URL: {exc}")
    try:
        async with session.post(
            url, data=body, headers=headers, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            excerpt = await _read_excerpt(response)
            status = response.status
            retry_after_header = response.headers.get("Retry-After")
    except TimeoutError:
        return _failure(started, "timeout", f"no complete response within {timeout:g} s")
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError) as exc:
        return _failure(started, "tls_error", f"TLS failed: {exc}")
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ssrf.SsrfBlocked):
            return _failure(started, "ssrf_blocked", str(exc.os_error))
        return _failure(started, "connect_error", f"could not connect: {exc}")
    except aiohttp.InvalidURL as exc:
        return _failure(started, "invalid_url", f"invalid URL: {exc}")
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError,
            aiohttp.ClientOSError, ConnectionError) as exc:
        # Connected, then the peer answered with something that is not HTTP or cut the connection.
        return _failure(started, "protocol_error", f"bad response: {type(exc).__name__}: {exc}")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return _failure(started, "connect_error", f"{type(exc).__name__}: {exc}")
    duration_ms = (time.perf_counter() - started) * 1000
    if 200 <= status < 300:
        return Outcome(True, duration_ms, http_status=status, response_excerpt=excerpt or None)
    retry_after = parse_retry_after(retry_after_header) if status in RETRY_AFTER_STATUSES else None
    return Outcome(False, duration_ms, http_status=status, error_class=f"http_{status // 100}xx",
                   error_message=f"HTTP {status}", response_excerpt=excerpt or None, retry_after=retry_after)
