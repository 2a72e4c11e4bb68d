"""Writing events into the outbox inside the caller's transaction.

The promise: ``publish`` writes the event (and one pending delivery per
subscribed endpoint) with the caller's connection and nothing else. It never
opens a connection, commits or rolls back. If the caller's transaction commits,
the event will be delivered; if it rolls back, the event never existed.

Everything that can be wrong with the input is checked before any SQL is sent,
so an ``OutboxError`` leaves the caller's transaction as it was.

The logic lives once, in ``_plan_one`` and ``_plan_many``: generators that
yield the statements to run and receive their rows. ``publish``/``apublish``
and their ``_many`` versions are thin shells that run those statements on a
sync or an async connection.

Publishing is on the caller's critical path, so it is kept cheap: one event is
written by a statement with plain parameters (one without dedupe for the common
case), a batch by one statement whose arrays are sent in binary (psycopg quotes
every element of a text array in Python, which cost more than the database
work), and psycopg connections prepare the statements on first use.

Each statement stores the caller's trace context (``outbox.tracecontext``) and
ordering key with the event. On a database that ``deliverer migrate`` has not
brought up to date yet (asked once per connection until it is) the statements as
released before those columns are used instead: upgrading this library before the
deliverer's migration runs must not fail the application's transactions.
"""

import contextlib
import json
import uuid
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from outbox import catalog, ids, sqlfile, tracecontext
from outbox.errors import (
    InvalidPayload,
    MissingOrgId,
    OutboxError,
    PayloadTooLarge,
    UnsupportedConnection,
    WritesRefused,
)

MAX_BODY_BYTES = 256 * 1024
"""Largest serialised event (``{"event": ..., "data": ...}`` in UTF-8) accepted."""

MAX_KEY_LENGTH = 255
"""Longest org_id, dedupe_key or ordering_key accepted."""

_QUERIES = sqlfile.load("outbox", "queries.sql")

# One encoder for every call: json.dumps would build a new one each time it is given options.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

Rows = list[tuple[Any, ...]]
Statement = tuple[str, dict[str, Any]]
Result = TypeVar("Result")

_Row = tuple[str, str, str, str, str | None, str | None]
"""An event ready to write: (id as 32 hex digits, org_id, event_type, body, dedupe_key, ordering_key)."""


@dataclass(frozen=True)
class Event:
    """One event for :func:`publish_many`."""

    event_type: str
    data: Mapping[str, Any]
    org_id: str
    dedupe_key: str | None = None
    ordering_key: str | None = None


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
        body = _ENCODER.encode({"event": event_type, "data": data})
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"{event_type}: data is not JSON-serialisable: {exc}") from None
    if body.isascii():  # a flag CPython keeps on every str: nothing to encode to know the size
        size = len(body)
    else:
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


def _prepare(event_type: str, data: Mapping[str, Any], org_id: str, dedupe_key: str | None,
             ordering_key: str | None = None) -> _Row:
    _check_key("org_id", org_id)
    for name, key in (("dedupe_key", dedupe_key), ("ordering_key", ordering_key)):
        if key is not None:
            _check_key(name, key)
    catalog.validate(event_type, data, org_id)
    body = serialize(event_type, data)
    return ids.new_event_hex(), org_id, event_type, body, dedupe_key, ordering_key


def _prepared(event: Event) -> _Row:
    return _prepare(event.event_type, event.data, event.org_id, event.dedupe_key, event.ordering_key)


def _statement(name: str, params: dict[str, Any], current: bool) -> Statement:
    """Statement ``name`` with the caller's trace context, or its legacy twin (``current`` False)."""
    if not current:
        return _QUERIES[f"{name}_legacy"], params
    params["traceparent"], params["tracestate"] = tracecontext.current()
    return _QUERIES[name], params


# Connections whose database has this library's columns: a migration never takes them away.
_CURRENT: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _known_current(raw: Any) -> bool:
    try:
        return raw in _CURRENT
    except TypeError:  # a driver connection that takes no weak references: asked every time
        return False


def _remember(raw: Any, current: bool) -> bool:
    if current:
        with contextlib.suppress(TypeError):
            _CURRENT.add(raw)
    return current


def _plan_current(raw: Any) -> Generator[Statement, Rows, bool]:
    """Whether the database behind ``raw`` has this library's columns; asked once per connection until it has."""
    if _known_current(raw):
        return True
    rows = yield _QUERIES["schema_is_current"], {}
    return _remember(raw, bool(rows[0][0]))


def _plan_one(event_id: str, org_id: str, event_type: str, body: str, dedupe_key: str | None,
              ordering_key: str | None, *, raw: Any) -> Generator[Statement, Rows, str]:
    """Write one prepared event; returns its public id (the first event's, when deduplicated).
    ``raw``: the driver's connection, for what is known of its database."""
    current = yield from _plan_current(raw)
    params = {"id": event_id, "org_id": org_id, "event_type": event_type, "body": body,
              "ordering_key": ordering_key}
    if dedupe_key is None:
        yield _statement("publish_event", params, current)
        return ids.EVENT_PREFIX + event_id
    params["dedupe_key"] = dedupe_key
    rows = yield _statement("publish_event_deduplicated", params, current)
    owner: uuid.UUID | None = rows[0][0]
    if owner is None:
        # The key was taken by a transaction that committed after this statement's
        # snapshot: under READ COMMITTED the next statement sees it.
        rows = yield _QUERIES["find_deduplicated"], {"org_ids": [org_id], "dedupe_keys": [dedupe_key]}
        if not rows:
            raise _key_not_visible(org_id, dedupe_key)
        owner = rows[0][2]
    return ids.EVENT_PREFIX + owner.hex


def _plan_many(rows: list[_Row], *, raw: Any) -> Generator[Statement, Rows, list[str]]:
    """Write prepared events; returns their public ids in input order."""
    if len(rows) == 1:
        return [(yield from _plan_one(*rows[0], raw=raw))]
    if not rows:
        return []
    current = yield from _plan_current(raw)
    result = yield _statement("publish_events", {
        "ids": [r[0] for r in rows],
        "org_ids": [r[1] for r in rows],
        "event_types": [r[2] for r in rows],
        "bodies": [r[3] for r in rows],
        "dedupe_keys": [r[4] for r in rows],
        "ordering_keys": [r[5] for r in rows],
    }, current)
    keyed = [r for r in rows if r[4] is not None]
    if not keyed:
        return [ids.EVENT_PREFIX + r[0] for r in rows]
    written = {event_id.hex for event_id in result[0][0]}
    skipped = [r for r in keyed if r[0] not in written]
    first: dict[tuple[str, str | None], str] = {}
    if skipped:
        found = yield _QUERIES["find_deduplicated"], {
            "org_ids": [r[1] for r in skipped],
            "dedupe_keys": [r[4] for r in skipped],
        }
        first = {(org_id, key): event_id.hex for org_id, key, event_id in found}
    public = []
    for event_id, org_id, _, _, dedupe_key, _ in rows:
        if dedupe_key is None or event_id in written:
            public.append(ids.EVENT_PREFIX + event_id)
        elif (org_id, dedupe_key) in first:
            public.append(ids.EVENT_PREFIX + first[org_id, dedupe_key])
        else:
            raise _key_not_visible(org_id, dedupe_key)
    return public


def _key_not_visible(org_id: str, dedupe_key: str | None) -> OutboxError:
    # Only possible under REPEATABLE READ or SERIALIZABLE when another
    # transaction took the key after this one's snapshot.
    return OutboxError(
        f"dedupe_key {dedupe_key!r} of org {org_id!r} was taken by a transaction this one "
        "cannot see; retry the transaction"
    )


def _run(plan: Generator[Statement, Rows, Result], execute: Callable[[str, dict[str, Any]], Rows]) -> Result:
    try:
        statement = next(plan)
        while True:
            statement = plan.send(execute(*statement))
    except StopIteration as done:
        result: Result = done.value  # the plan's return value
        return result


async def _arun(
    plan: Generator[Statement, Rows, Result],
    execute: Callable[[str, dict[str, Any]], Awaitable[Rows]],
) -> Result:
    try:
        statement = next(plan)
        while True:
            statement = plan.send(await execute(*statement))
    except StopIteration as done:
        result: Result = done.value  # the plan's return value
        return result


# PostgreSQL 14 and later report these to the client whenever they change (a
# promotion, ALTER SYSTEM/DATABASE and a reload, a new session): reading them costs
# no round trip, and refusing then leaves the caller's transaction untouched.
_READ_ONLY_REPORTS = ("in_hot_standby", "default_transaction_read_only")


def _refuse_if_read_only(info: psycopg.ConnectionInfo) -> None:
    for name in _READ_ONLY_REPORTS:
        if info.parameter_status(name) == "on":
            raise WritesRefused(
                f"the database does not accept writes ({name} is on: a standby or a server set read-only); "
                "nothing was written and the transaction is as it was: retry once the primary accepts writes",
                transaction_usable=True)


def _refused(exc: psycopg.Error) -> WritesRefused:
    return WritesRefused(
        f"the database refused the write ({type(exc).__name__}: {str(exc).strip().splitlines()[0]}); "
        "nothing was written: roll back the transaction and retry once the database accepts writes",
        transaction_usable=False)


# The errors that mean "not now" rather than "not this": a read-only transaction or
# server (25006), a full disk (53100).
_WRITE_REFUSALS = (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.DiskFull)


def _refuse_if_read_only_sa(dbapi_connection: Any) -> None:
    """The same for SQLAlchemy on psycopg 3 (psycopg2 does not expose what the server reports)."""
    if isinstance(dbapi_connection, psycopg.Connection | psycopg.AsyncConnection):
        _refuse_if_read_only(dbapi_connection.info)


@contextlib.contextmanager
def _sa_refusals() -> Iterator[None]:
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        if isinstance(exc.orig, _WRITE_REFUSALS):
            raise _refused(exc.orig) from None
        raise


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


Executor = tuple[Callable[[str, dict[str, Any]], Rows], Any]
AsyncExecutor = tuple[Callable[[str, dict[str, Any]], Awaitable[Rows]], Any]


def _sync_executor(conn: Any) -> Executor:
    """How to run a statement on ``conn``, and the driver's connection under it."""
    if isinstance(conn, psycopg.Connection):
        _refuse_if_read_only(conn.info)

        def execute(sql: str, params: dict[str, Any]) -> Rows:
            # prepare=True: prepared at once rather than after five runs (unless the
            # connection disables prepared statements, e.g. behind PgBouncer).
            with conn.cursor() as cur:
                try:
                    cur.execute(sql, params, prepare=True)
                except _WRITE_REFUSALS as exc:
                    raise _refused(exc) from None
                rows: Rows = cur.fetchall()
                return rows
        return execute, conn

    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, Connection):
        _check_sqlalchemy_driver(conn.dialect)
        _refuse_if_read_only_sa(conn.connection.dbapi_connection)

        def execute_sa(sql: str, params: dict[str, Any]) -> Rows:
            with _sa_refusals():
                return list(conn.exec_driver_sql(sql, params).fetchall())
        return execute_sa, conn.connection.dbapi_connection
    raise _unsupported(conn)


async def _async_executor(conn: Any) -> AsyncExecutor:
    if isinstance(conn, psycopg.AsyncConnection):
        _refuse_if_read_only(conn.info)

        async def execute(sql: str, params: dict[str, Any]) -> Rows:
            async with conn.cursor() as cur:
                try:
                    await cur.execute(sql, params, prepare=True)
                except _WRITE_REFUSALS as exc:
                    raise _refused(exc) from None
                rows: Rows = await cur.fetchall()
                return rows
        return execute, conn

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, AsyncConnection):
        _check_sqlalchemy_driver(conn.dialect)
        raw = await conn.get_raw_connection()
        _refuse_if_read_only_sa(getattr(raw.dbapi_connection, "driver_connection", None))

        async def execute_sa(sql: str, params: dict[str, Any]) -> Rows:
            with _sa_refusals():
                result = await conn.exec_driver_sql(sql, params)
                return list(result.fetchall())
        return execute_sa, getattr(raw.dbapi_connection, "driver_connection", raw.dbapi_connection)
    raise _unsupported(conn)


def publish(conn: Any, event_type: str, data: Mapping[str, Any], *, org_id: str,
            dedupe_key: str | None = None, ordering_key: str | None = None) -> str:
    """Write one event in the caller's transaction and return its public id (``evt_…``).

    The event will be delivered if and only if the caller's transaction commits.
    With ``dedupe_key``, publishing the same key again for the same org writes
    nothing and returns the first event's id. ``ordering_key``: endpoints that
    deliver in order (ordering ``fifo``) send the events of one key one at a time,
    in publish order; other keys (and no key, which is one key of its own) go on
    meanwhile. Endpoints that do not deliver in order ignore it.
    """
    execute, raw = _sync_executor(conn)
    event = _prepare(event_type, data, org_id, dedupe_key, ordering_key)
    return _run(_plan_one(*event, raw=raw), execute)


def publish_many(conn: Any, events: Iterable[Event]) -> list[str]:
    """Write many events with one statement; ids are returned in input order.

    All events are validated before anything is written: one bad event raises
    and none of them is written.
    """
    execute, raw = _sync_executor(conn)
    prepared = [_prepared(e) for e in events]
    return _run(_plan_many(prepared, raw=raw), execute)


async def apublish(conn: Any, event_type: str, data: Mapping[str, Any], *, org_id: str,
                   dedupe_key: str | None = None, ordering_key: str | None = None) -> str:
    """:func:`publish` for psycopg ``AsyncConnection`` and SQLAlchemy ``AsyncConnection``/``AsyncSession``."""
    execute, raw = await _async_executor(conn)
    event = _prepare(event_type, data, org_id, dedupe_key, ordering_key)
    return await _arun(_plan_one(*event, raw=raw), execute)


async def apublish_many(conn: Any, events: Iterable[Event]) -> list[str]:
    """:func:`publish_many` for async connections."""
    execute, raw = await _async_executor(conn)
    prepared = [_prepared(e) for e in events]
    return await _arun(_plan_many(prepared, raw=raw), execute)
