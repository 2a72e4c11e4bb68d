"""Reading delivery history back out of the log: attempts, one delivery, one event, polling.

Everything here is derived from delivery_log and outbox_event; nothing is
stored twice. Rows arrive as frozen dataclasses (psycopg's ``class_row``: each
query's columns are named as the fields); ``as_json`` gives the public JSON shape.
The API and the CLI get plain dicts from the async functions, the CLI's tables
and the demo the rows themselves from the sync ones.
"""

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from deliverer.history.queries import QUERIES
from outbox.ids import delivery_public_id, event_public_id, iso


class BadCursor(ValueError):
    """A pagination cursor that this server did not hand out."""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else iso(value)


def _ms(duration_ms: float | None) -> float | None:
    return None if duration_ms is None else round(duration_ms, 1)


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadCursor("cursor is not one this API returned; start again without it") from None
    if not isinstance(parts, list) or len(parts) != arity:
        raise BadCursor("cursor is not one this API returned; start again without it")
    return parts


@dataclass(frozen=True)
class Attempt:
    """One attempt (finished, abandoned or late) with its event's type. ``kind`` and ``outcome``
    hold the values of facts.FactKind and facts.Outcome as the database returns them."""

    seq: int
    at: datetime  # when the attempt started, or was recorded if it never did
    event_type: str
    event_id: uuid.UUID
    delivery_id: uuid.UUID
    endpoint_id: str
    series: int
    attempt: int
    kind: str
    outcome: str | None
    http_status: int | None
    duration_ms: float | None
    error_class: str | None
    error_message: str | None
    next_attempt_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": f"att_{self.seq}", "timestamp": _iso(self.at), "event_type": self.event_type,
            "event_id": event_public_id(self.event_id), "delivery_id": delivery_public_id(self.delivery_id),
            "endpoint_id": self.endpoint_id, "series": self.series, "attempt": self.attempt, "kind": self.kind,
            "outcome": self.outcome, "http_status": self.http_status, "response_time_ms": _ms(self.duration_ms),
            "error_class": self.error_class, "error_message": self.error_message,
            "next_attempt_at": _iso(self.next_attempt_at),
        }


async def attempts(conn: psycopg.AsyncConnection[Any], *, org_id: str | None, endpoint_id: str | None = None,
                   event_type: str | None = None, outcome: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, cursor: str | None = None,
                   limit: int = 50) -> tuple[list[dict[str, Any]], str | None]:
    """Attempts newest first; the cursor continues below the last one returned, so new
    attempts arriving meanwhile never shift a page."""
    before_seq = None
    if cursor:
        [before_seq] = decode_cursor(cursor, 1)
        if not isinstance(before_seq, int):
            raise BadCursor("cursor is not one this API returned; start again without it")
    cur = await conn.cursor(row_factory=class_row(Attempt)).execute(QUERIES["attempts"], {
        "org_id": org_id, "endpoint_id": endpoint_id, "before_seq": before_seq, "event_type": event_type,
        "outcome": outcome, "since": since, "until": until, "limit": limit + 1,
    })
    rows = await cur.fetchall()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].seq) if len(rows) > limit else None
    return [a.as_json() for a in page], next_cursor


def attempt_history(conn: psycopg.Connection, org_id: str | None) -> list[Attempt]:
    """Every attempt (of the org, unless None) in the order they were recorded."""
    cur = conn.cursor(row_factory=class_row(Attempt))
    return cur.execute(QUERIES["attempt_history"], {"org_id": org_id}).fetchall()


@dataclass(frozen=True)
class DeliverySummary:
    """A delivery's state derived from the log, with its event's type and its endpoint's URL."""

    delivery_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    endpoint_id: str
    url: str
    state: str
    series: int
    attempt: int
    due_at: datetime | None
    updated_at: datetime


def delivery_summaries(conn: psycopg.Connection, org_id: str | None, limit: int) -> list[DeliverySummary]:
    """Deliveries (of the org, unless None), newest events first."""
    cur = conn.cursor(row_factory=class_row(DeliverySummary))
    return cur.execute(QUERIES["delivery_summary"], {"org_id": org_id, "limit": limit}).fetchall()


@dataclass(frozen=True)
class LogEntry:
    """One fact of a delivery's log, as a delivery's history shows it."""

    seq: int
    recorded_at: datetime
    kind: str
    series: int
    attempt: int
    outcome: str | None
    started_at: datetime | None
    duration_ms: float | None
    http_status: int | None
    error_class: str | None
    error_message: str | None
    response_excerpt: str | None
    next_attempt_at: datetime | None
    worker_id: str | None
    actor: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "recorded_at": _iso(self.recorded_at), "kind": self.kind, "series": self.series,
            "attempt": self.attempt, "outcome": self.outcome, "started_at": _iso(self.started_at),
            "response_time_ms": _ms(self.duration_ms), "http_status": self.http_status,
            "error_class": self.error_class, "error_message": self.error_message,
            "response_excerpt": self.response_excerpt, "next_attempt_at": _iso(self.next_attempt_at),
            "worker_id": self.worker_id, "actor": self.actor,
        }


@dataclass(frozen=True)
class _Delivery:
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    endpoint_id: str
    org_id: str
    state: str
    series: int
    attempt: int
    due_at: datetime | None  # the next attempt's time, or the lease's end while in flight
    updated_at: datetime
    event_created_at: datetime

    def as_json(self, history: list[LogEntry]) -> dict[str, Any]:
        return {
            "id": delivery_public_id(self.delivery_id), "event_id": event_public_id(self.event_id),
            "event_type": self.event_type, "endpoint_id": self.endpoint_id, "state": self.state,
            "series": self.series, "attempts": self.attempt,
            "next_attempt_at": _iso(self.due_at) if self.state in ("pending", "retrying") else None,
            "lease_expires_at": _iso(self.due_at) if self.state == "in_flight" else None,
            "updated_at": _iso(self.updated_at), "event_created_at": _iso(self.event_created_at),
            "history": [h.as_json() for h in history],
        }


async def delivery(conn: psycopg.AsyncConnection[Any], delivery_id: uuid.UUID,
                   org_id: str | None) -> dict[str, Any] | None:
    """A delivery's state, derived from its log, and that log in full."""
    cur = await conn.cursor(row_factory=class_row(_Delivery)).execute(
        QUERIES["get_delivery"], {"delivery_id": delivery_id, "org_id": org_id})
    found = await cur.fetchone()
    if found is None:
        return None
    history = await conn.cursor(row_factory=class_row(LogEntry)).execute(
        QUERIES["delivery_history"], {"delivery_id": found.delivery_id})
    return found.as_json(await history.fetchall())


@dataclass(frozen=True)
class _Event:
    id: uuid.UUID
    event_type: str
    body: str  # the serialised event, exactly as receivers get it
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": event_public_id(self.id), "type": self.event_type, "data": json.loads(self.body)["data"],
                "created_at": _iso(self.created_at)}


@dataclass(frozen=True)
class _EventDelivery:
    delivery_id: uuid.UUID
    endpoint_id: str
    state: str
    series: int
    attempt: int
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": delivery_public_id(self.delivery_id), "endpoint_id": self.endpoint_id, "state": self.state,
                "series": self.series, "attempts": self.attempt, "updated_at": _iso(self.updated_at)}


async def event(conn: psycopg.AsyncConnection[Any], event_id: uuid.UUID, org_id: str) -> dict[str, Any] | None:
    """An event as receivers get it, with each of its deliveries' current state."""
    cur = await conn.cursor(row_factory=class_row(_Event)).execute(
        QUERIES["get_event"], {"event_id": event_id, "org_id": org_id})
    found = await cur.fetchone()
    if found is None:
        return None
    deliveries = await conn.cursor(row_factory=class_row(_EventDelivery)).execute(
        QUERIES["event_deliveries"], {"event_id": found.id})
    return found.as_json() | {"deliveries": [d.as_json() for d in await deliveries.fetchall()]}


@dataclass(frozen=True)
class _PolledEvent(_Event):
    txid: str  # of the transaction that committed it: with the id, the position a cursor keeps


START = encode_cursor("0", str(uuid.UUID(int=0)))


def _events_position(cursor: str | None) -> tuple[str, uuid.UUID]:
    after_txid, after_id = decode_cursor(cursor or START, 2)
    try:
        if not str(after_txid).isdigit():
            raise ValueError
        return str(after_txid), uuid.UUID(str(after_id))
    except ValueError:
        raise BadCursor("cursor is not one this API returned; start again without it") from None


async def events_after(conn: psycopg.AsyncConnection[Any], org_id: str, *, cursor: str | None,
                       event_types: list[str] | None, limit: int) -> tuple[list[dict[str, Any]], str]:
    """An org's events in commit order after the cursor; the returned cursor continues after the
    last one (or stays where it was when nothing new is ready)."""
    after_txid, after_id = _events_position(cursor)
    cur = await conn.cursor(row_factory=class_row(_PolledEvent)).execute(QUERIES["events_after"], {
        "org_id": org_id, "after_txid": after_txid, "after_id": after_id,
        "event_types": event_types, "limit": limit,
    })
    rows = await cur.fetchall()
    next_cursor = encode_cursor(rows[-1].txid, str(rows[-1].id)) if rows else (cursor or START)
    return [r.as_json() for r in rows], next_cursor
