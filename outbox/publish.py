"""Writing events into the outbox inside the caller's transaction.

The promise: ``publish`` writes the event (and one pending delivery per
subscribed endpoint) with the caller's connection and nothing else. It never
opens a connection, commits or rolls back. If the caller's transaction commits,
the event will be delivered; if it rolls back, the event never existed.

Everything that can be wrong with the input is checked before any SQL is sent,
so an ``OutboxError`` leaves the caller's transaction as it was.

The logic lives once, in ``_plan``: a generator that yields the statements to
run and receives their rows. ``publish``/``apublish`` are thin shells that run
those statements on a sync or an async connection.
"""

import json
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from outbox import catalog, ids, sqlfile
from outbox.errors import InvalidPayload, MissingOrgId, OutboxError, PayloadTooLarge, UnsupportedConnection

MAX_BODY_BYTES = 256 * 1024
"""Largest serialised event (``{"event": ..., "data": ...}`` in UTF-8) accepted."""

MAX_KEY_LENGTH = 255
"""Longest org_id or dedupe_key accepted."""

_QUERIES = sqlfile.load("outbox", "queries.sql")

Rows = list[tuple[Any, ...]]
Statement = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Event:
    """One event for :func:`publish_many`."""

    event_type: str
    data: Mapping[str, Any]
    org_id: str
    dedupe_key: str | None = None


@dataclass(frozen=True)
class _Prepared:
    id: uuid.UUID
    org_id: str
    event_type: str
    body: str
    dedupe_key: str | None


def _check_key(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise (MissingOrgId if name == "org_id" else InvalidPayload)(
            f"{name} must be a non-empty string, got {value!r}"
        )
    if len(value) > MAX_KEY_LENGTH or "\x00" in value:
        raise InvalidPayload(f"{name} must be at most {MAX_KEY_LENGTH} characters with no NUL bytes")


def serialize(event_type: str, data: Mapping[str, Any]) -> str:
    """The exact body receivers get: ``{"event": <type>, "data": {...}}``."""
    try:
        body = json.dumps(
            {"event": event_type, "data": data},
            ensure_ascii=False, separators=(",", ":"), allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"{event_type}: data is not JSON-serialisable: {exc}") from None
    try:
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidPayload(f"{event_type}: data contains text that is not valid Unicode: {exc}") from None
    if size > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"{event_type}: the event is {size} bytes serialised, over the {MAX_BODY_BYTES}-byte limit; "
            "send a reference (an id or URL) to large data instead of the data itself"
        )
    return body


def _prepare(event: Event) -> _Prepared:
    _check_key("org_id", event.org_id)
    if event.dedupe_key is not None:
        _check_key("dedupe_key", event.dedupe_key)
    catalog.validate(event.event_type, event.data, event.org_id)
    body = serialize(event.event_type, event.data)
    return _Prepared(ids.new_event_uuid(), event.org_id, event.event_type, body, event.dedupe_key)


def _plan(events: Sequence[Event]) -> Generator[Statement, Rows, list[str]]:
    prepared = [_prepare(event) for event in events]
    if not prepared:
        return []
    rows = yield _QUERIES["publish_events"], {
        "ids": [p.id for p in prepared],
        "org_ids": [p.org_id for p in prepared],
        "event_types": [p.event_type for p in prepared],
        "bodies": [p.body for p in prepared],
        "dedupe_keys": [p.dedupe_key for p in prepared],
    }
    inserted = {row[0] for row in rows}
    skipped = [p for p in prepared if p.id not in inserted]
    first: dict[tuple[str, str | None], uuid.UUID] = {}
    if skipped:
        rows = yield _QUERIES["find_deduplicated"], {
            "org_ids": [p.org_id for p in skipped],
            "dedupe_keys": [p.dedupe_key for p in skipped],
        }
        first = {(org_id, key): event_id for org_id, key, event_id in rows}
    result = []
    for p in prepared:
        if p.id in inserted:
            result.append(ids.event_public_id(p.id))
        elif (p.org_id, p.dedupe_key) in first:
            result.append(ids.event_public_id(first[p.org_id, p.dedupe_key]))
        else:
            # Only possible under REPEATABLE READ or SERIALIZABLE when another
            # transaction took the key after this one's snapshot.
            raise OutboxError(
                f"dedupe_key {p.dedupe_key!r} of org {p.org_id!r} was taken by a transaction this one "
                "cannot see; retry the transaction"
            )
    return result


def _run(plan: Generator[Statement, Rows, list[str]], execute: Callable[[str, dict[str, Any]], Rows]) -> list[str]:
    try:
        statement = next(plan)
        while True:
            statement = plan.send(execute(*statement))
    except StopIteration as done:
        return done.value


async def _arun(
    plan: Generator[Statement, Rows, list[str]],
    execute: Callable[[str, dict[str, Any]], Awaitable[Rows]],
) -> list[str]:
    try:
        statement = next(plan)
        while True:
            statement = plan.send(await execute(*statement))
    except StopIteration as done:
        return done.value


def _unsupported(conn: Any) -> UnsupportedConnection:
    return UnsupportedConnection(
        f"cannot publish on a {type(conn).__module__}.{type(conn).__qualname__}; pass a psycopg "
        "Connection, or a SQLAlchemy Connection or Session (apublish: their async versions)"
    )


def _check_sqlalchemy_driver(dialect: Any) -> None:
    if dialect.name != "postgresql" or dialect.driver not in ("psycopg", "psycopg2"):
        raise UnsupportedConnection(
            f"the outbox needs PostgreSQL through psycopg; this engine uses {dialect.name}+{dialect.driver}. "
            "Create the engine with a postgresql+psycopg:// URL"
        )


def _sync_executor(conn: Any) -> Callable[[str, dict[str, Any]], Rows]:
    if isinstance(conn, psycopg.Connection):
        def execute(sql: str, params: dict[str, Any]) -> Rows:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        return execute

    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, Connection):
        _check_sqlalchemy_driver(conn.dialect)
        return lambda sql, params: list(conn.exec_driver_sql(sql, params).fetchall())
    raise _unsupported(conn)


async def _async_executor(conn: Any) -> Callable[[str, dict[str, Any]], Awaitable[Rows]]:
    if isinstance(conn, psycopg.AsyncConnection):
        async def execute(sql: str, params: dict[str, Any]) -> Rows:
            async with conn.cursor() as cur:
                await cur.execute(sql, params)
                return await cur.fetchall()
        return execute

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, AsyncConnection):
        _check_sqlalchemy_driver(conn.dialect)

        async def execute_sa(sql: str, params: dict[str, Any]) -> Rows:
            result = await conn.exec_driver_sql(sql, params)
            return list(result.fetchall())
        return execute_sa
    raise _unsupported(conn)


def publish(conn: Any, event_type: str, data: Mapping[str, Any], *, org_id: str,
            dedupe_key: str | None = None) -> str:
    """Write one event in the caller's transaction and return its public id (``evt_…``).

    The event will be delivered if and only if the caller's transaction commits.
    With ``dedupe_key``, publishing the same key again for the same org writes
    nothing and returns the first event's id.
    """
    return publish_many(conn, [Event(event_type, data, org_id, dedupe_key)])[0]


def publish_many(conn: Any, events: Iterable[Event]) -> list[str]:
    """Write many events with one statement; ids are returned in input order.

    All events are validated before anything is written: one bad event raises
    and none of them is written.
    """
    return _run(_plan(list(events)), _sync_executor(conn))


async def apublish(conn: Any, event_type: str, data: Mapping[str, Any], *, org_id: str,
                   dedupe_key: str | None = None) -> str:
    """:func:`publish` for psycopg ``AsyncConnection`` and SQLAlchemy ``AsyncConnection``/``AsyncSession``."""
    return (await apublish_many(conn, [Event(event_type, data, org_id, dedupe_key)]))[0]


async def apublish_many(conn: Any, events: Iterable[Event]) -> list[str]:
    """:func:`publish_many` for async connections."""
    plan = _plan(list(events))
    return await _arun(plan, await _async_executor(conn))
