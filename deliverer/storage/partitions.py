"""Daily partitions of the append-only tables: created ahead of time, dropped past retention.

outbox_event is range-partitioned on its UUIDv7 id and delivery_log on
recorded_at, one partition per UTC day (``WIDTH``). A day is a small step next to
a retention of weeks (at most a day more is kept than asked for), and keeps the
number of partitions every query plans over to about fifty: the retained days
plus ``DAYS_AHEAD``. An hourly width would keep the extra data to an hour, at the
price of 24 times as many partitions. Bounds are multiples of the width since the
Unix epoch; a width change applies to partitions created afterwards, the gaps
between old and new bounds being filled with shorter partitions.

``ensure`` creates the partitions from yesterday to ``DAYS_AHEAD`` days ahead. It
runs in ``deliverer migrate``, hourly in every ``deliverer run`` (``maintain``)
and in ``deliverer retention``, always in the caller's transaction and under the
migration advisory lock, so pods never race each other. A DEFAULT partition
catches rows no partition covers, so a producer never fails when maintenance
lapsed; no partition can be attached over rows it holds, so such a range is
skipped and reported, never forced.

``retain`` drops the partitions whose upper bound is older than the cutoff,
except those holding an event or a fact of a delivery still open in
delivery_queue: the projection's rebuild, the worker and replays need them. Each
drop is its own short transaction, because dropping a partition locks its
parent against every producer and reader until commit. Every lock is
transaction-scoped, so all of this works through a transaction pooler.
"""

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

import psycopg
import structlog
from psycopg import sql

from deliverer.ops.metrics import METRICS
from deliverer.ops.progress import Progress, quiet
from deliverer.settings import Settings
from deliverer.storage import connections
from deliverer.storage.queries import QUERIES

log = structlog.get_logger("deliverer.partitions")

WIDTH = timedelta(days=1)
DAYS_AHEAD = 14
MAINTENANCE_INTERVAL = 3600.0  # seconds between a deliverer's attempts to create upcoming partitions
# Deliveries retry for about 1.2 hours and replays need their history: a shorter
# retention takes --force.
MIN_OLDER_THAN = timedelta(days=1)
DEDUPE_BATCH = 5000
TABLES = ("outbox_event", "delivery_log")
CREATING = "creating partitions"  # the progress step of ensure
RETENTION_DOCS = "docs/operations.md, Retention"  # where operators read what a skipped partition means

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"(\d+)([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_LONGEST = timedelta(days=36500)
_BUSY = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled, psycopg.errors.DeadlockDetected)


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    low: datetime | None   # None: MINVALUE (a table attached by the upgrade), or the default partition
    high: datetime | None  # None: the default partition
    guarded: bool          # refuses TRUNCATE


@dataclass(frozen=True)
class Decision:
    """What maintenance or retention did, or would do, with one partition."""

    action: str  # created, dropped, kept, skipped; "would create" and "would drop" in a dry run
    table: str
    name: str
    low: datetime | None
    high: datetime | None
    reason: str = ""


@dataclass
class RetentionReport:
    cutoff: datetime
    dry_run: bool
    decisions: list[Decision] = field(default_factory=list)
    dedupe_before: datetime | None = None  # None: dedupe keys were kept, their events still are
    dedupe_pruned: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as an operator reads it: one line per partition touched or skipped, totals for the rest."""
        out = [f"cutoff {_iso(self.cutoff)}" + (" (dry run: nothing was changed)" if self.dry_run else "")]
        for d in self.decisions:
            if d.action != "kept" or d.reason:
                span = "DEFAULT" if d.high is None else f"{_iso(d.low) if d.low else 'MINVALUE'} .. {_iso(d.high)}"
                out.append(f"{d.action:<12} {d.name:<32} {span}" + (f"  ({d.reason})" if d.reason else ""))
        for table in TABLES:
            kept = [d for d in self.decisions if d.table == table and d.action == "kept" and not d.reason]
            if kept:
                out.append(f"{'kept':<12} {len(kept)} {table} partitions newer than the cutoff")
        if self.dedupe_before is None:
            out.append(f"{'kept':<12} every outbox_dedupe key (events older than the cutoff are still kept)")
        else:
            out.append(f"{'would prune' if self.dry_run else 'pruned':<12} {self.dedupe_pruned} outbox_dedupe "
                       f"keys recorded before {_iso(self.dedupe_before)}")
        return out + self.notes


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h`` or ``90m``: a positive whole number of days, hours or minutes."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        count, unit = int(match[1]), _UNITS[match[2]]
        if 0 < count <= _LONGEST / timedelta(**{unit: 1}):
            return timedelta(**{unit: count})
    raise ValueError(f"expected a duration like 30d, 12h or 90m (a positive whole number of days, hours or "
                     f"minutes, at most {_LONGEST.days}d), got {text!r}")


def event_id_bound(moment: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of ``moment``'s millisecond: its Unix milliseconds, then zeros."""
    return uuid.UUID(int=((moment - _EPOCH) // timedelta(milliseconds=1)) << 80)


def _key(table: str, moment: datetime | None) -> Any:
    """A time as the partition key of ``table``."""
    if moment is None or table == "delivery_log":
        return moment
    return event_id_bound(moment)


def floor(moment: datetime) -> datetime:
    """The start of the partition (a multiple of WIDTH since the epoch) that ``moment`` falls in."""
    return _EPOCH + (moment - _EPOCH) // WIDTH * WIDTH


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def partition_name(table: str, low: datetime) -> str:
    low = low.astimezone(UTC)
    return f"{table}_p{low:%Y%m%d}" + (f"_{low:%H%M}" if low.time() != time() else "")


def uncovered(existing: list[tuple[datetime | None, datetime]], start: datetime,
              end: datetime) -> list[tuple[datetime, datetime]]:
    """The width-aligned ranges of [start, end) that no existing (low, high) range covers; low None is MINVALUE."""
    ranges = []
    at = start
    while at < end:
        covering = [high for low, high in existing if (low is None or low <= at) and high > at]
        if covering:
            at = max(covering)
            continue
        high = min([floor(at) + WIDTH, end] + [low for low, _ in existing if low is not None and low > at])
        ranges.append((at, high))
        at = high
    return ranges


def _one(conn: psycopg.Connection, query: str, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """The row of a statement that always returns exactly one (a count, an existence test, a lock attempt)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from a statement that always returns one: {query}")
    return row


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    return [Partition(*row) for row in conn.execute(QUERIES["partition_list"]).fetchall()]


def ensure(conn: psycopg.Connection, now: datetime | None = None, *, days_ahead: int = DAYS_AHEAD,
           dry_run: bool = False, progress: Progress = quiet) -> list[Decision]:
    """Create the partitions from yesterday through ``days_ahead`` days after ``now``, in the caller's transaction.

    Idempotent. A range whose rows already went to the DEFAULT partition is
    skipped and reported. Also gives any partition without one its TRUNCATE guard.
    """
    now = now or datetime.now(UTC)
    start, end = floor(now - WIDTH), floor(now) + (days_ahead + 1) * WIDTH
    existing = list_partitions(conn)
    missing: list[tuple[str, datetime, datetime]] = []
    for table in TABLES:
        ranges = [(p.low, p.high) for p in existing if p.table == table and p.high is not None]
        missing += [(table, low, high) for low, high in uncovered(ranges, start, end)]
    decisions = []
    for done, (table, low, high) in enumerate(missing):
        progress(CREATING, done, len(missing))
        decisions.append(_create(conn, table, low, high, dry_run))
    progress(CREATING, len(missing), len(missing))
    if not dry_run:
        for p in list_partitions(conn):
            if not p.guarded:
                conn.execute(sql.SQL(QUERIES["partition_guard"]).format(
                    trigger=sql.Identifier(f"{p.table}_no_truncate"), partition=sql.Identifier(p.name)))
    return decisions


def _create(conn: psycopg.Connection, table: str, low: datetime, high: datetime, dry_run: bool) -> Decision:
    """Create the partition of [low, high), unless the DEFAULT partition holds rows there; a dry run only says."""
    name = partition_name(table, low)
    bounds = {"low": _key(table, low), "high": _key(table, high)}
    if _one(conn, QUERIES[f"partition_default_has_{table}"], bounds)[0]:
        reason = f"the default partition {table}_default holds rows in this range; see {RETENTION_DOCS}"
        log.warning("partition not created", partition=name, reason=reason)
        return Decision("skipped", table, name, low, high, reason)
    if dry_run:
        return Decision("would create", table, name, low, high)
    conn.execute(sql.SQL(QUERIES["partition_create"]).format(
        partition=sql.Identifier(name), parent=sql.Identifier(table),
        low=sql.Literal(bounds["low"]), high=sql.Literal(bounds["high"])))
    return Decision("created", table, name, low, high)


def maintain_once(settings: Settings, now: datetime | None = None) -> list[Decision] | None:
    """One round of maintenance on its own short connection; None when another pod holds the lock."""
    with connections.connect(settings, "deliverer partitions") as conn, conn.transaction():
        if not _one(conn, QUERIES["try_lock_migrations"])[0]:
            return None
        conn.execute(QUERIES["partition_ddl_timeouts"])
        return ensure(conn, now)


async def maintain(settings: Settings, interval: float = MAINTENANCE_INTERVAL) -> None:
    """Create upcoming partitions every ``interval`` seconds until cancelled; a failure waits for the next round.

    Runs in a thread (the same code as ``deliverer migrate``), and the database has
    ``DAYS_AHEAD`` days of partitions to spare, so an outage or a lock it could
    not get costs nothing but a warning.
    """
    while True:
        try:
            decisions = await asyncio.to_thread(maintain_once, settings)
            for d in decisions or []:
                if d.action == "created" and d.low is not None and d.high is not None:  # a created one has both
                    log.info("partition created", partition=d.name, low=_iso(d.low), high=_iso(d.high))
        except Exception as exc:  # never let maintenance take the worker down
            METRICS.db_errors.labels("partitions").inc()
            log.warning("could not maintain partitions; will try again", error=str(exc).strip(),
                        retry_in_seconds=interval)
        await asyncio.sleep(interval)


def _open_deliveries(conn: psycopg.Connection, p: Partition) -> int:
    return int(_one(conn, QUERIES[f"partition_open_{p.table}"],
                    {"low": _key(p.table, p.low), "high": _key(p.table, p.high)})[0])


def _drop(conn: psycopg.Connection, p: Partition) -> Decision | None:
    """Drop one partition unless it holds an open delivery; None if another run dropped it first."""
    try:
        with conn.transaction():
            conn.execute(QUERIES["lock_migrations"])
            conn.execute(QUERIES["partition_ddl_timeouts"])
            if not _one(conn, QUERIES["partition_exists"], {"name": p.name})[0]:
                return None
            conn.execute(sql.SQL(QUERIES["partition_lock_for_drop"]).format(parent=sql.Identifier(p.table)))
            if opened := _open_deliveries(conn, p):
                return Decision("skipped", p.table, p.name, p.low, p.high, _still_open(p, opened))
            conn.execute(sql.SQL(QUERIES["partition_drop"]).format(partition=sql.Identifier(p.name)))
    except _BUSY as exc:
        return Decision("skipped", p.table, p.name, p.low, p.high,
                        f"busy: {str(exc).strip().splitlines()[0]}; the next run tries again")
    return Decision("dropped", p.table, p.name, p.low, p.high)


def _still_open(p: Partition, opened: int) -> str:
    what = "events" if p.table == "outbox_event" else "facts"
    return f"holds {what} of {_count(opened, 'open delivery', 'open deliveries')}"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def retain(conn: psycopg.Connection, older_than: timedelta, *, now: datetime | None = None,
           dry_run: bool = False, progress: Progress = quiet) -> RetentionReport:
    """Create upcoming partitions, drop those entirely older than ``now - older_than``, prune old dedupe keys.

    ``conn`` is an autocommit connection; every step is a transaction of its own
    under the migration lock and checks again what it found, so two runs at once
    do the work once. With ``dry_run`` nothing changes.
    """
    now = now or datetime.now(UTC)
    report = RetentionReport(cutoff=now - older_than, dry_run=dry_run)
    _create_upcoming(conn, report, now)
    _drop_older(conn, report, progress)
    _prune_dedupe(conn, report, progress)
    return report


def _create_upcoming(conn: psycopg.Connection, report: RetentionReport, now: datetime) -> None:
    try:
        with conn.transaction():
            conn.execute(QUERIES["lock_migrations"])
            conn.execute(QUERIES["partition_ddl_timeouts"])
            report.decisions += ensure(conn, now, dry_run=report.dry_run)
    except _BUSY as exc:  # the deliverers create them hourly too: dropping need not wait for this
        report.notes.append(f"upcoming partitions not created: {str(exc).strip().splitlines()[0]}; "
                            "the next run or a running deliverer will")


def _drop_older(conn: psycopg.Connection, report: RetentionReport, progress: Progress) -> None:
    """Keep the default partition and those newer than the cutoff; drop the others, or say what a drop would do."""
    default_rows = dict(zip(TABLES, _one(conn, QUERIES["partition_default_rows"]), strict=True))
    found = list_partitions(conn)
    for done, p in enumerate(found):
        progress("partitions", done, len(found))
        _judge(conn, report, p, default_rows)
    progress("partitions", len(found), len(found))


def _judge(conn: psycopg.Connection, report: RetentionReport, p: Partition, default_rows: dict[str, int]) -> None:
    """Keep, drop, or (dry run) say what dropping ``p`` would do."""
    if p.high is None:
        rows = default_rows[p.table]
        reason = (f"holds {_count(rows, 'row')} no other partition covers; see {RETENTION_DOCS}" if rows
                  else "empty")
        report.decisions.append(Decision("kept", p.table, p.name, p.low, p.high, reason))
    elif p.high > report.cutoff:
        report.decisions.append(Decision("kept", p.table, p.name, p.low, p.high))
    elif report.dry_run:
        opened = _open_deliveries(conn, p)
        report.decisions.append(Decision("skipped", p.table, p.name, p.low, p.high, _still_open(p, opened))
                                if opened else Decision("would drop", p.table, p.name, p.low, p.high))
    elif (decision := _drop(conn, p)) is not None:
        report.decisions.append(decision)


def _prune_dedupe(conn: psycopg.Connection, report: RetentionReport, progress: Progress) -> None:
    """Forget the dedupe keys recorded before both the cutoff and the oldest outbox_event partition kept.

    A dedupe key outlives the cutoff while its event does: forgetting it then
    would let a re-publish duplicate an event still being delivered. A partition
    kept from MINVALUE (no lower bound) keeps every key.
    """
    remaining = [d.low for d in report.decisions if d.table == "outbox_event" and d.high is not None
                 and d.action in ("kept", "skipped")]
    lows = [low for low in remaining if low is not None]
    if len(lows) < len(remaining):
        return
    report.dedupe_before = min([report.cutoff, *lows])
    total = _one(conn, QUERIES["dedupe_count"], {"before": report.dedupe_before})[0]
    if report.dry_run:
        report.dedupe_pruned = total
        return
    while True:
        pruned = conn.execute(QUERIES["dedupe_prune"],
                              {"before": report.dedupe_before, "limit": DEDUPE_BATCH}).rowcount
        report.dedupe_pruned += pruned
        # Keys recorded meanwhile can make it more than counted; the bar then ends at what was pruned.
        progress("outbox_dedupe keys", report.dedupe_pruned, max(total, report.dedupe_pruned))
        if pruned < DEDUPE_BATCH:
            break
