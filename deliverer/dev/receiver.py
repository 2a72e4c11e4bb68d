"""A webhook receiver on loopback that records what it gets: for the demo, the tests and the fault suite.

It is a real aiohttp server, so the deliverer opens real connections to it,
exactly as to a customer's endpoint. Every request is recorded the moment it
arrives (a send that is still hanging is already visible) and gets its
answer's status once there is one. Each path answers 200 unless it is given a
behaviour; the behaviour is called with the request and the 1-based count of
requests to that path, so "fail the first two, then succeed" is one line.

A path with a secret has its X-DocExtract-Signature checked the way the
customer docs' Flask receiver checks it; with ``reject_bad_signatures`` a
mismatch is answered 401, as a customer's endpoint would, and the behaviour is
not called.
"""

import asyncio
import hashlib
import hmac
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from deliverer.dev.waiting import aeventually

EVENT_ID = "X-DocExtract-Event-Id"
DELIVERY_ID = "X-DocExtract-Delivery-Id"
ATTEMPT = "X-DocExtract-Delivery-Attempt"
SIGNATURE = "X-DocExtract-Signature"

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


def docs_verify(payload: bytes, signature: str | None, secret: str) -> bool:
    """verify_webhook_signature from the customer docs' Flask receiver, as written there.

    Deliberately not the package's own check (outbox.signatures): this is the
    customer's side, written independently of the code under test.
    """
    expected_signature = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature or "", expected_signature)


@dataclass
class Received:
    """One request as it arrived, and the status it was answered with."""

    path: str
    event_id: str
    delivery_id: str
    attempt: int
    at: float  # time.perf_counter() on arrival
    headers: dict[str, str] = field(default_factory=dict)  # empty unless the receiver keeps content
    body: bytes = b""
    signature_ok: bool | None = None  # None: the path has no secret to check against
    status: int | None = None  # None while unanswered, or when the sender went away first


def respond(status: int = 200, text: str = "OK", headers: dict[str, str] | None = None) -> Behaviour:
    """Always answer ``status``."""
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=status, text=text, headers=headers)
    return behaviour


def fail_first(failures: int, status: int = 500) -> Behaviour:
    """Answer ``status`` to the first ``failures`` requests, then 200."""
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=status if n <= failures else 200)
    return behaviour


def hold_until(release: asyncio.Event, *, first: int | None = None) -> Behaviour:
    """Keep the first ``first`` requests (every one when None) unanswered until ``release`` is set, then 200."""
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        if first is None or n <= first:
            await release.wait()
        return web.Response(text="OK")
    return behaviour


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class Receiver:
    """Start with ``await Receiver().start()`` (or ``async with Receiver() as receiver:``); ``url(path)`` to register.

    ``keep_content=False`` records only the path, ids and status of each request:
    for runs of tens of thousands of requests, where headers and bodies would
    only cost memory.
    """

    def __init__(self, *, reject_bad_signatures: bool = False, keep_content: bool = True) -> None:
        self.reject_bad_signatures = reject_bad_signatures
        self.keep_content = keep_content
        self.base_url = ""
        self.requests: list[Received] = []
        self.secrets: dict[str, str] = {}  # path -> the endpoint's signing secret
        self.behaviours: dict[str, Behaviour] = {}
        self.arrivals: Counter[str] = Counter()  # requests per path, answered or not yet
        self.changed = asyncio.Event()  # set on every arrival and every answer
        self._runner: web.AppRunner | None = None

    async def start(self, *, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> "Receiver":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Handlers are cancelled when the sender goes away, as on a real server: a hanging
        # behaviour must not outlive the connection that it hangs.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, 0, ssl_context=ssl_context).start()
        port = self._runner.addresses[0][1]
        self.base_url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "Receiver":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def behave(self, path: str, behaviour: Behaviour) -> None:
        self.behaviours[path] = behaviour

    def fail_first(self, path: str, failures: int, status: int = 500) -> None:
        self.behave(path, fail_first(failures, status))

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def event_ids(self, path: str | None = None) -> list[str]:
        return [r.event_id for r in self.requests if path is None or r.path == path]

    def answered(self) -> list[Received]:
        return [r for r in self.requests if r.status is not None]

    def delivered(self) -> set[tuple[str, str]]:
        """(event id, path) of every request answered with a 2xx."""
        return {(r.event_id, r.path) for r in self.requests if r.status is not None and 200 <= r.status < 300}

    async def wait_until(self, predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
        """Wait for a condition on what arrived; checked again on every arrival and answer."""
        await aeventually(predicate, what, timeout=timeout, interval=0.5, wake=self.changed)

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` requests have arrived (answered or not)."""
        await aeventually(lambda: len(self.requests) >= count,
                          lambda: f"{count} requests at {self.base_url} (got {len(self.requests)})",
                          timeout=timeout, interval=0.5, wake=self.changed)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path, headers = request.path, request.headers
        secret = self.secrets.get(path)
        received = Received(
            path, headers.get(EVENT_ID, ""), headers.get(DELIVERY_ID, ""), _int(headers.get(ATTEMPT)),
            time.perf_counter(), dict(headers) if self.keep_content else {}, body if self.keep_content else b"",
            None if secret is None else docs_verify(body, headers.get(SIGNATURE), secret))
        self.requests.append(received)
        self.arrivals[path] += 1
        n = self.arrivals[path]
        self.changed.set()
        try:
            if received.signature_ok is False and self.reject_bad_signatures:
                response: web.StreamResponse = web.Response(status=401, text="Invalid signature")
            else:
                behaviour = self.behaviours.get(path)
                response = web.Response(text="OK") if behaviour is None else await behaviour(request, n)
            received.status = response.status
            return response
        finally:
            self.changed.set()
