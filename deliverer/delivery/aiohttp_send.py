"""The same attempt through aiohttp's client: ``DELIVERER_HTTP_CLIENT=aiohttp``.

``deliverer.delivery.send.Client`` is the default because it costs a fraction of
aiohttp's CPU per request (docs/performance.md). This one is for operators who
would rather run the well-known client: the same request on the wire (the
signed body, the same headers, no others, no redirects, no compression), the
same SSRF guard (aiohttp resolves through ``ssrf.GuardedResolver``; IP literals
are vetted before the request), the same bounds (the whole exchange within the
timeout, at most ``EXCERPT_BYTES`` of a body read, headers up to
``MAX_HEAD_BYTES``) and the same error classes, which a differential test holds
both clients to over the receiver matrix. It has no egress proxy (the settings
refuse the combination).
"""

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from deliverer.delivery.send import (
    EXCERPT_BYTES,
    IDLE_SECONDS,
    MAX_CLIENT_CERTIFICATES,
    MAX_HEAD_BYTES,
    RETRY_AFTER_STATUSES,
    ClientCertificate,
    Outcome,
    _failure,
    loggable,
    parse_retry_after,
)
from deliverer.facts import ErrorClass
from deliverer.security import client_certificates, ssrf

# aiohttp adds these unless told not to; the default client sends none of them.
_NOT_SENT = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def _classified(exc: BaseException, host: str | None, timeout: float) -> tuple[ErrorClass, str]:
    """The error class and message of a failed exchange, as the default client would record them."""
    if isinstance(exc, TimeoutError):
        return ErrorClass.TIMEOUT, f"no complete response within {timeout:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ssrf.SsrfBlocked):
        exc = exc.os_error
    if isinstance(exc, ssrf.SsrfBlocked):
        return ErrorClass.SSRF_BLOCKED, str(exc)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
        return ErrorClass.TLS_ERROR, f"TLS failed: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ErrorClass.CONNECT_ERROR, f"could not connect to {host}: {exc}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ErrorClass.PROTOCOL_ERROR, f"bad response: {type(exc).__name__}: {exc}"
    return ErrorClass.OTHER, f"cannot send: {exc}"


class AiohttpClient:
    """POSTs webhook attempts through one aiohttp session, with the interface of ``send.Client``."""

    def __init__(self, *, allowed: tuple[ssrf.Network, ...] = (), resolver: AbstractResolver | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 new_ssl_context: Callable[[], ssl.SSLContext] = ssl.create_default_context,
                 max_idle: int = 200) -> None:
        self.allowed = allowed
        self.resolver = ssrf.GuardedResolver(allowed, inner=resolver or ThreadedResolver())
        self.ssl_context = ssl_context or new_ssl_context()
        self.new_ssl_context = new_ssl_context
        self.max_idle = max_idle
        self._client_contexts: dict[str, ssl.SSLContext] = {}
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No DNS cache: every new connection goes through the guard, as with the default client.
            connector = aiohttp.TCPConnector(resolver=self.resolver, use_dns_cache=False, limit=0,
                                             keepalive_timeout=IDLE_SECONDS)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=_NOT_SENT,
                cookie_jar=aiohttp.DummyCookieJar(), max_line_size=MAX_HEAD_BYTES, max_field_size=MAX_HEAD_BYTES)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.resolver.close()

    def _context(self, client_certificate: ClientCertificate | None) -> ssl.SSLContext:
        """The TLS context; one per client identity, so aiohttp pools their connections apart."""
        if client_certificate is None:
            return self.ssl_context
        identity = client_certificates.fingerprint(*client_certificate)
        context = self._client_contexts.get(identity)
        if context is None:
            context = client_certificates.load(self.new_ssl_context(), *client_certificate)
            if len(self._client_contexts) >= MAX_CLIENT_CERTIFICATES:
                self._client_contexts.clear()
            self._client_contexts[identity] = context
        return context

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float,
                   client_certificate: ClientCertificate | None = None) -> Outcome:
        started = time.perf_counter()
        parts = urlsplit(url)
        try:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return _failure(started, ErrorClass.INVALID_URL, f"cannot request {url!r}")
            address = ssrf.literal(parts.hostname)
            if address is not None:
                ssrf.check_address(address, self.allowed)
            context = self._context(client_certificate) if parts.scheme == "https" else None
            async with asyncio.timeout(timeout), self._open().post(
                    url, data=body, headers=dict(headers), allow_redirects=False, ssl=context or True) as response:
                # Like the default client: the body to its end, or its first EXCERPT_BYTES; a
                # connection cut before either is a protocol error, not an answer.
                excerpt = b""
                while len(excerpt) < EXCERPT_BYTES and (data := await response.content.read(
                        EXCERPT_BYTES - len(excerpt))):
                    excerpt += data
                if not response.content.at_eof():
                    response.close()  # an endless or huge body: read no further, the connection goes
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError) as exc:
            return _failure(started, *_classified(exc, parts.hostname, timeout))
        duration_ms = (time.perf_counter() - started) * 1000
        text = loggable(excerpt.decode("utf-8", "replace")) or None
        if 200 <= status < 300:
            return Outcome(True, duration_ms, http_status=status, response_excerpt=text)
        wait = parse_retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None
        return Outcome(False, duration_ms, http_status=status, error_class=ErrorClass.for_status(status),
                       error_message=f"HTTP {status}", response_excerpt=text, retry_after=wait)
