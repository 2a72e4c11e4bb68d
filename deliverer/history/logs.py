"""Reading delivery history back out of the log: attempts, one delivery, one event, polling.

Everything here is derived from delivery_log and outbox_event; nothing is
stored twice. Results are plain dicts in the public JSON shape.
"""

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

import psycopg

from deliverer.history.queries import QUERIES
from outbox.ids import delivery_public_id, event_public_id, iso


class BadCursor(ValueError):
    """A pagination cursor that this server did not hand out."""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else iso(value)


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


def attempt_json(row: tuple[Any, ...]) -> dict[str, Any]:
    (seq, at, event_type, event_id, delivery_id, endpoint_id, series, attempt, kind, outcome, status,
     duration_ms, error_class, error_message, next_attempt_at) = row
    return {
        "id": f"att_{seq}", "timestamp": _iso(at), "event_type": event_type,
        "event_id": event_public_id(event_id), "delivery_id": delivery_public_id(delivery_id),
        "endpoint_id": endpoint_id, "series": series, "attempt": attempt, "kind": kind, "outcome": outcome,
        "http_status": status, "response_time_ms": None if duration_ms is None else round(duration_ms, 1),
        "error_class": error_class, "error_message": error_message, "next_attempt_at": _iso(next_attempt_at),
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
    cur = await conn.execute(QUERIES["attempts"], {
        "org_id": org_id, "endpoint_id": endpoint_id, "before_seq": before_seq, "event_type": event_type,
        "outcome": outcome, "since": since, "until": until, "limit": limit + 1,
    })
    rows = await cur.fetchall()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1][0]) if len(rows) > limit else None
    return [attempt_json(row) for row in page], next_cursor


def _history_json(row: tuple[Any, ...]) -> dict[str, Any]:
    (seq, recorded_at, kind, series, attempt, outcome, started_at, duration_ms, status, error_class,
     error_message, excerpt, next_attempt_at, worker_id, actor) = row
    return {
        "seq": seq, "recorded_at": _iso(recorded_at), "kind": kind, "series": series, "attempt": attempt,
        "outcome": outcome, "started_at": _iso(started_at),
        "response_time_ms": None if duration_ms is None else round(duration_ms, 1), "http_status": status,
        "error_class": error_class, "error_message": error_message, "response_excerpt": excerpt,
        "next_attempt_at": _iso(next_attempt_at), "worker_id": worker_id, "actor": actor,
    }


async def delivery(conn: psycopg.AsyncConnection[Any], delivery_id: uuid.UUID,
                   org_id: str | None) -> dict[str, Any] | None:
    """A delivery's state, derived from its log, and that log in full."""
    row = await (await conn.execute(QUERIES["get_delivery"], {"delivery_id": delivery_id,
                                                               "org_id": org_id})).fetchone()
    if row is None:
        return None
    (did, event_id, event_type, endpoint_id, _org, state, series, attempt, due_at, updated_at, created_at) = row
    history = await (await conn.execute(QUERIES["delivery_history"], {"delivery_id": did})).fetchall()
    return {
        "id": delivery_public_id(did), "event_id": event_public_id(event_id), "event_type": event_type,
        "endpoint_id": endpoint_id, "state": state, "series": series, "attempts": attempt,
        "next_attempt_at": _iso(due_at) if state in ("pending", "retrying") else None,
        "lease_expires_at": _iso(due_at) if state == "in_flight" else None,
        "updated_at": _iso(updated_at), "event_created_at": _iso(created_at),
        "history": [_history_json(h) for h in history],
    }


async def event(conn: psycopg.AsyncConnection[Any], event_id: uuid.UUID, org_id: str) -> dict[str, Any] | None:
    """An event as receivers get it, with each of its deliveries' current state."""
    row = await (await conn.execute(QUERIES["get_event"], {"event_id": event_id, "org_id": org_id})).fetchone()
    if row is None:
        return None
    eid, _org, event_type, body, created_at = row
    deliveries = await (await conn.execute(QUERIES["event_deliveries"], {"event_id": eid})).fetchall()
    return {
        "id": event_public_id(eid), "type": event_type, "data": json.loads(body)["data"],
        "created_at": _iso(created_at),
        "deliveries": [{
            "id": delivery_public_id(d[0]), "endpoint_id": d[1], "state": d[2], "series": d[3], "attempts": d[4],
            "updated_at": _iso(d[6]),
        } for d in deliveries],
    }


START = encode_cursor("0", str(uuid.UUID(int=0)))


async def events_after(conn: psycopg.AsyncConnection[Any], org_id: str, *, cursor: str | None,
                       event_types: list[str] | None, limit: int) -> tuple[list[dict[str, Any]], str]:
    """An org's events in commit order after the cursor; the returned cursor continues after the
    last one (or stays where it was when nothing new is ready)."""
    after_txid, after_id = decode_cursor(cursor or START, 2)
    try:
        if not str(after_txid).isdigit():
            raise ValueError
        after_uuid = uuid.UUID(str(after_id))
    except ValueError:
        raise BadCursor("cursor is not one this API returned; start again without it") from None
    rows = await (await conn.execute(QUERIES["events_after"], {
        "org_id": org_id, "after_txid": str(after_txid), "after_id": after_uuid,
        "event_types": event_types, "limit": limit,
    })).fetchall()
    items = [{"id": event_public_id(r[0]), "type": r[1], "data": json.loads(r[2])["data"],
              "created_at": _iso(r[3])} for r in rows]
    next_cursor = encode_cursor(rows[-1][4], str(rows[-1][0])) if rows else (cursor or START)
    return items, next_cursor
