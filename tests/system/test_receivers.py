"""The receivers in examples/, run as real processes and fed by the real deliverer.

Between the deliverer and each receiver sits the tests' aiohttp server as a
forwarding proxy. It passes every request through unchanged and, for the first
attempt of each event, throws the receiver's 200 away and answers 503: the
receiver has handled the event but the deliverer does not know, so it sends the
same event again, as it would after a lost response. Every event type must be
verified and handled exactly once, with the retry recognised as a duplicate by
its X-DocExtract-Event-Id.
"""

import asyncio
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import psycopg
import pytest
from aiohttp import web

import outbox
from deliverer.delivery.worker import Worker
from outbox.catalog import CONTRACT_EVENT_TYPES
from outbox.signatures import docextract_signature
from tests.support import Receiver, add_endpoint, aeventually, settings_for
from tests.support.paths import EXAMPLES

PATH = "/webhooks/docextract"
ORG = "org_xyz789"

HANDLED = re.compile(r"handled (\S+) (evt_[0-9a-f]{32})")
DUPLICATE = re.compile(r"duplicate (evt_[0-9a-f]{32}) skipped")
LISTENING = re.compile(r"listening on (http://\S+/webhooks/docextract)")


def _python(script: str) -> Callable[[Path], list[str]]:
    return lambda _tmp: [sys.executable, str(EXAMPLES / script)]


def _express(_tmp: Path) -> list[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed, so the Express receiver cannot run (.ci/run installs them)")
    folder = EXAMPLES / "express"
    if not (folder / "node_modules" / "express").is_dir():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder, capture_output=True, text=True,
                              timeout=170)
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return [node, str(folder / "server.js")]


def _go(tmp: Path) -> list[str]:
    go = shutil.which("go")
    if go is None:
        pytest.skip("the go command is missing, so the Go receiver cannot be built: "
                    "`apt-get install golang-go` (Debian) provides it, and .ci/run installs it")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod"}
    if not (env.get("GOCACHE") or env.get("XDG_CACHE_HOME") or env.get("HOME")):
        env["GOCACHE"] = str(tmp / "go-cache")
    binary = tmp / "receiver"
    done = subprocess.run([go, "build", "-o", str(binary), "."], cwd=EXAMPLES / "go", env=env,
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, f"go build failed:\n{done.stdout}\n{done.stderr}"
    return [str(binary)]


RECEIVERS: dict[str, Callable[[Path], list[str]]] = {
    "flask": _python("flask/receiver.py"),
    "aiohttp": _python("aiohttp/receiver.py"),
    "express": _express,
    "go": _go,
}


@dataclass
class ReceiverProcess:
    """An example receiver running as a subprocess, its stdout and stderr in one log file."""

    command: list[str]
    secret: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self) -> None:
        env = {**os.environ, "WEBHOOK_SECRET": self.secret, "HOST": "127.0.0.1", "PORT": "0"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, done: Callable[[str], bool], what: str, timeout: float = 30) -> str:
        """Wait until the log satisfies ``done``; return the log."""
        def log_done() -> str | None:
            text = self.log()
            if done(text):
                return text
            assert self.proc is not None and self.proc.poll() is None, f"receiver exited:\n{text}"
            return None
        return await aeventually(log_done, lambda: f"a {what} from the receiver; its log:\n{self.log()}",
                                 timeout=timeout, interval=0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class LosingProxy:
    """Forwards requests unchanged; drops the receiver's answer to each event's first attempt."""

    target: str
    session: aiohttp.ClientSession
    answers: list[tuple[str, str, int]] = field(default_factory=list)  # event id, attempt, receiver's status

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        body = await request.read()
        forwarded = {k: v for k, v in request.headers.items()
                     if k.lower().startswith("x-docextract-") or k.lower() in ("content-type", "user-agent")}
        async with self.session.post(self.target, data=body, headers=forwarded) as response:
            text = await response.text()
        attempt = request.headers["X-DocExtract-Delivery-Attempt"]
        self.answers.append((request.headers["X-DocExtract-Event-Id"], attempt, response.status))
        if attempt == "1":
            return web.Response(status=503, text="the receiver's answer was lost on the way")
        return web.Response(status=response.status, text=text)


def _all_five_events(now: datetime) -> list[outbox.Event]:
    """Every event type, made by the builders and helpers."""
    created, started = now - timedelta(seconds=5), now - timedelta(seconds=4, milliseconds=532)
    completed = outbox.job_finished(
        job_id="job_abc123", org_id=ORG, extractor_id="ext_def456",
        outcome=outbox.JobResult({"invoice_number": "INV-2024-001", "total_amount": 1250.50},
                                 {"invoice_number": 0.98, "total_amount": 0.95}),
        created_at=created, started_at=started, finished_at=now, cost_credits=2,
        metadata={"customer_id": "cust_123"},
    )
    failed = outbox.job_finished(
        job_id="job_def456", org_id=ORG, extractor_id="ext_def456",
        outcome=outbox.JobError("document_unreadable", "Document quality is too low to extract text",
                                "Please provide a higher quality scan or image"),
        created_at=created, started_at=started, finished_at=now, cost_credits=0,
    )
    credits = outbox.credits.balance_events(
        org_id=ORG, old_balance=150, new_balance=0, threshold=100, plan_allowance=2000, average_job_cost=2,
        jobs_queued=5, now=now,
    )
    return [completed, failed, *credits, outbox.events.webhook_test(org_id=ORG, timestamp=now)]


@contextlib.contextmanager
def _running(process: ReceiverProcess) -> Iterator[ReceiverProcess]:
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("name", list(RECEIVERS))
async def test_receiver_handles_every_event_once_when_delivered_twice(
        name: str, dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """The example receiver verifies and handles each event type once, and skips the retry of each as a duplicate."""
    command = RECEIVERS[name](tmp_path)
    endpoint = add_endpoint(db, receiver, PATH, org_id=ORG)
    assert endpoint.secret is not None
    process = ReceiverProcess(command, endpoint.secret, tmp_path / f"{name}.log")
    with _running(process):
        started = await process.wait_for(LISTENING.search, "listening line")
        target = LISTENING.search(started).group(1)  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            proxy = LosingProxy(target, session)
            receiver.behave(PATH, proxy)

            events = _all_five_events(datetime.now(UTC))
            assert sorted(e.event_type for e in events) == sorted(CONTRACT_EVENT_TYPES)
            with psycopg.connect(dsn) as conn:
                ids = outbox.publish_many(conn, events)
            published = {event_id: event.event_type for event_id, event in zip(ids, events, strict=True)}

            settings = settings_for(dsn, retry_delays=(0.05,) * 5)
            stop = asyncio.Event()
            async with Worker(settings) as worker:
                running = asyncio.create_task(worker.run(stop))
                try:
                    await receiver.wait_for(2 * len(published))
                    await aeventually(lambda: db.execute(
                        "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) FROM delivery_state"
                    ).fetchone() == (len(published), len(published)), "delivered state for every event")
                finally:
                    stop.set()
                    await running

            # Each of the 2 x 5 requests the receiver answered 200 logged one handled or duplicate line.
            log = await process.wait_for(
                lambda text: len(HANDLED.findall(text)) + len(DUPLICATE.findall(text)) >= 2 * len(published),
                "handled or duplicate line per request")
            handled = collections.Counter(HANDLED.findall(log))
            assert handled == collections.Counter({(t, e) for e, t in published.items()})
            assert sorted(DUPLICATE.findall(log)) == sorted(published)
            assert sorted(proxy.answers) == sorted((e, a, 200) for e in published for a in ("1", "2"))
            assert all(r.signature_ok for r in receiver.to(PATH))

            # Not signed with the secret: refused, and nothing is handled.
            body = b'{"event":"webhook.test","data":{"message":"forged","timestamp":"2024-11-23T10:00:00Z"}}'
            forged_id = "evt_" + "f" * 32
            good = docextract_signature(endpoint.secret, body)
            for signature in (docextract_signature("whsec_someone_else", body), good[:-1], "", good.upper()):
                headers = {"Content-Type": "application/json", "X-DocExtract-Signature": signature,
                           "X-DocExtract-Event-Id": forged_id}
                async with session.post(target, data=body, headers=headers) as response:
                    assert response.status == 401, (signature, await response.text())
            tampered = body.replace(b"forged", b"f0rged")
            async with session.post(target, data=tampered, headers={
                    "Content-Type": "application/json", "X-DocExtract-Signature": good,
                    "X-DocExtract-Event-Id": forged_id}) as response:
                assert response.status == 401

            # A signed event of a type the receiver does not know is logged and acknowledged.
            unknown = b'{"event":"invoice.archived","data":{}}'
            unknown_id = "evt_" + "a" * 32
            headers = {"Content-Type": "application/json", "X-DocExtract-Event-Id": unknown_id,
                       "X-DocExtract-Signature": docextract_signature(endpoint.secret, unknown)}
            async with session.post(target, data=unknown, headers=headers) as response:
                assert response.status == 200
            log = await process.wait_for(lambda text: "Unknown event type: invoice.archived" in text,
                                         "unknown-event line")
            assert forged_id not in log
            assert collections.Counter(HANDLED.findall(log)) == handled
