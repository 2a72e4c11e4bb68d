"""The receiving end of the benchmark: a minimal HTTP/1.1 keep-alive server in its own process.

It competes with the deliverer and PostgreSQL for the same cores, so it does as
little as possible per request: an ``asyncio.Protocol`` that finds the end of
the headers, reads ``Content-Length`` and ``X-DocExtract-Event-Id``, waits for
the body, notes the receipt time and answers ``200 OK`` with a two-byte body.
No routing framework, no header dictionary, no body parsing.

Receipt times are ``time.monotonic()`` (CLOCK_MONOTONIC), the same clock the
benchmark process reads when a producer's COMMIT returns, so commit-to-receipt
latencies can be taken across the two processes. The time is read once per
``data_received`` call, i.e. when the bytes reach the sink's event loop.

Paths (the path is the endpoint: everything below is kept per path):

- ``/slow/<seconds>/...`` records the request, then answers only after
  ``<seconds>`` (a receiver that hangs; the deliverer's timeout cuts it off).
- ``/lognormal/<median ms>/<sigma>/...`` answers after a delay drawn for each
  request from a log-normal distribution (sigma 1.68 puts p99 at 50 times the median).
- ``/status/<code>/...`` answers ``<code>`` at once (``/status/500/...``: a failing receiver).
- ``/_count`` answers the number of requests recorded (``/_count/hook/`` of
  those whose path starts with ``/hook/``); ``/_reset`` forgets
  them; ``/_dump`` answers them all as JSON ``[[path, event_id, time], ...]``;
  ``/_stats`` answers, per path, the requests open now (received, not yet
  answered), the most open at once since the reset, and the arrivals in each
  second since the reset (:meth:`SinkProcess.stats`).
  These control paths are not recorded.
- Anything else is recorded and answered at once.

Delays never block the sink: a delayed answer is a timer on its connection
(HTTP/1.1 clients send the next request on a connection only after the
answer), so open requests are counted from receipt to answer, or to the
client giving up and closing the connection.

Run it as ``python -m bench.sink``: it prints ``port <n>`` once listening on
127.0.0.1 and serves until SIGTERM. :class:`SinkProcess` does that for the
benchmark, and :func:`capacity` measures how many requests per second it can
take on its own.
"""

import asyncio
import bisect
import contextlib
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench import machine

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nOK"
_STATUS = {500: b"Internal Server Error", 503: b"Service Unavailable", 429: b"Too Many Requests"}
_CONTENT_LENGTH = b"\r\ncontent-length:"
_EVENT_ID = b"\r\nx-docextract-event-id:"


def _header(head: bytes, lower: bytes, name: bytes) -> bytes:
    """The value of header ``name`` (lower case, with its leading CRLF and colon), or b''."""
    start = lower.find(name)
    if start < 0:
        return b""
    start += len(name)
    end = head.find(b"\r\n", start)
    return head[start:end if end >= 0 else len(head)].strip()


class Recorder:
    """What the sink has received: (path, event id, monotonic time) per request, and per path the
    requests open now, the peak of open requests and the arrivals per second since the last reset."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, float]] = []
        self.open: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.arrivals: dict[str, dict[int, int]] = {}
        self.since = time.monotonic()

    def received(self, path: str, event_id: str, now: float) -> None:
        self.records.append((path, event_id, now))
        open_now = self.open.get(path, 0) + 1
        self.open[path] = open_now
        if open_now > self.peak.get(path, 0):
            self.peak[path] = open_now
        second = int(now - self.since)
        per_second = self.arrivals.setdefault(path, {})
        per_second[second] = per_second.get(second, 0) + 1

    def answered(self, path: str) -> None:
        self.open[path] -= 1

    def stats(self) -> dict[str, dict[str, Any]]:
        return {path: {"open": self.open.get(path, 0), "peak": peak,
                       "arrivals_per_second": sorted(self.arrivals.get(path, {}).items())}
                for path, peak in self.peak.items()}

    def control(self, path: bytes) -> bytes:
        if path == b"/_count":
            body = str(len(self.records)).encode()
        elif path.startswith(b"/_count/"):
            prefix = path[len(b"/_count"):].decode()
            body = str(sum(1 for record in self.records if record[0].startswith(prefix))).encode()
        elif path == b"/_reset":
            self.records = []
            self.peak = {p: n for p, n in self.open.items() if n}  # what is still open counts on
            self.arrivals = {}
            self.since = time.monotonic()
            body = b"0"
        elif path == b"/_stats":
            body = json.dumps(self.stats()).encode()
        else:
            body = json.dumps(self.records).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _delay(path: bytes) -> float | None:
    """Seconds to wait before answering a request to ``path``, or None to answer at once."""
    if path.startswith(b"/slow/"):
        return float(path.split(b"/")[2])
    if path.startswith(b"/lognormal/"):
        _, _, median_ms, sigma = path.split(b"/")[:4]
        return random.lognormvariate(math.log(float(median_ms) / 1000), float(sigma))
    return None


def _response(path: bytes) -> bytes:
    if path.startswith(b"/status/"):
        code = int(path.split(b"/")[2])
        return b"HTTP/1.1 %d %s\r\nContent-Length: 2\r\n\r\nNO" % (code, _STATUS.get(code, b"Status"))
    return RESPONSE


class _Connection(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.hanging: asyncio.TimerHandle | None = None
        self.open_path = ""  # the path of the request waiting for its delayed answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hanging is not None:
            self.hanging.cancel()
            self.hanging = None
            self.recorder.answered(self.open_path)  # the client gave up: no longer open

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer
        buffer += data
        while self.hanging is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            lower = head.lower()
            length = _header(head, lower, _CONTENT_LENGTH)
            size = end + 4 + (int(length) if length else 0)
            if len(buffer) < size:
                return
            del buffer[:size]
            first = head.find(b" ")
            path = head[first + 1:head.find(b" ", first + 1)]
            assert self.transport is not None
            if path.startswith(b"/_"):
                self.transport.write(self.recorder.control(path))
                continue
            event_id = _header(head, lower, _EVENT_ID).decode()
            text = path.decode()
            self.recorder.received(text, event_id, now)
            delay = _delay(path)
            if delay is not None:
                self.open_path = text
                self.hanging = asyncio.get_running_loop().call_later(delay, self._answer_late)
                return
            self.transport.write(_response(path))
            self.recorder.answered(text)

    def _answer_late(self) -> None:
        self.hanging = None
        self.recorder.answered(self.open_path)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_response(self.open_path.encode()))
            if self.buffer:
                self.data_received(b"")


async def serve() -> None:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(recorder), "127.0.0.1", 0, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


class SinkProcess:
    """The sink as a child process, with a keep-alive control connection to it."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sink", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if not line.startswith(b"port "):
            raise RuntimeError(f"the sink did not start: {line!r}")
        self.port = int(line.split()[1])
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 10)

    async def _get(self, path: str) -> bytes:
        assert self._reader is not None and self._writer is not None
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: sink\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = int(_header(head, head.lower(), _CONTENT_LENGTH))
        return await self._reader.readexactly(length)

    async def count(self, prefix: str = "") -> int:
        """Requests recorded, or only those whose path starts with ``prefix``."""
        return int(await self._get(f"/_count{prefix}"))

    async def reset(self) -> None:
        await self._get("/_reset")

    async def dump(self) -> list[tuple[str, str, float]]:
        return [tuple(r) for r in json.loads(await self._get("/_dump"))]  # type: ignore[misc]

    async def stats(self) -> dict[str, "EndpointStats"]:
        """Per path (endpoint), since the last reset: requests open now, the peak, arrivals per second."""
        raw = json.loads(await self._get("/_stats"))
        return {path: EndpointStats(s["open"], s["peak"], {int(k): n for k, n in s["arrivals_per_second"]})
                for path, s in raw.items()}

    async def wait_for(self, count: int, timeout: float, interval: float = 0.02, prefix: str = "") -> int:
        """Wait until at least ``count`` requests (to paths starting with ``prefix``) arrived or
        ``timeout`` passed; the count reached."""
        deadline = time.monotonic() + timeout
        seen = await self.count(prefix)
        while seen < count and time.monotonic() < deadline:
            await asyncio.sleep(interval)
            seen = await self.count(prefix)
        return seen


@dataclass(frozen=True)
class EndpointStats:
    """What the sink saw at one endpoint (path): for checks like "peak concurrency <= max_in_flight"."""

    open: int  # requests received and not answered yet
    peak: int  # the most requests open at once
    arrivals_per_second: dict[int, int]  # second since the reset -> requests that arrived in it

    def most_in_window(self, seconds: int) -> int:
        """The most arrivals in any ``seconds`` consecutive whole seconds (e.g. 10 for a rate limit)."""
        counts = self.arrivals_per_second
        return max((sum(counts.get(s + i, 0) for i in range(seconds)) for s in counts), default=0)


def most_in_window(times: list[float], seconds: float) -> int:
    """The most of ``times`` (receipt times, any order) in any window of ``seconds``, exactly."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + seconds) - i for i, t in enumerate(ordered)), default=0)


class _LoadConnection(asyncio.Protocol):
    """One keep-alive client connection that sends the next request when the answer is in."""

    def __init__(self, request: bytes, done: list[int], stop: asyncio.Event) -> None:
        self.request, self.done, self.stop = request, done, stop
        self.transport: asyncio.Transport | None = None
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.pending += len(data)
        while self.pending >= len(RESPONSE):
            self.pending -= len(RESPONSE)
            self.done[0] += 1
            if not self.stop.is_set() and self.transport is not None:
                self.transport.write(self.request)


async def capacity(sink: SinkProcess, body: bytes, *, seconds: float = 2.0, connections: int = 50) -> dict[str, Any]:
    """Requests/s the sink answers alone, driven by a raw keep-alive client in this process.

    The request carries the deliverer's headers and a real event body. The
    client shares the machine, so this is a lower bound of what the sink takes.
    """
    headers = (b"POST /hook/capacity HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"User-Agent: DocExtract-Webhooks/0.1.0\r\nX-DocExtract-Event-Id: evt_0123456789abcdef\r\n"
               b"X-DocExtract-Event-Type: job.completed\r\nX-DocExtract-Signature: " + b"0" * 64 + b"\r\n"
               b"webhook-id: evt_0123456789abcdef\r\nwebhook-timestamp: 1700000000\r\n"
               b"webhook-signature: v1," + b"A" * 44 + b"\r\nX-DocExtract-Delivery-Attempt: 1\r\n")
    request = headers + b"Content-Length: %d\r\n\r\n" % len(body) + body
    loop = asyncio.get_running_loop()
    done, stop = [0], asyncio.Event()
    transports = []
    cpu_before = machine.process_cpu(sink.pid)
    started = time.monotonic()
    for _ in range(connections):
        transport, _protocol = await loop.create_connection(
            lambda: _LoadConnection(request, done, stop), "127.0.0.1", sink.port)
        transports.append(transport)
    await asyncio.sleep(seconds)
    stop.set()
    elapsed = time.monotonic() - started
    answered = done[0]
    cpu = machine.process_cpu(sink.pid) - cpu_before
    for transport in transports:
        transport.close()
    await sink.reset()
    return {"requests_per_s": answered / elapsed, "sink_cpu_ms_per_1000": cpu * 1e6 / max(answered, 1),
            "sink_core_share": cpu / elapsed, "connections": connections, "seconds": seconds}


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
