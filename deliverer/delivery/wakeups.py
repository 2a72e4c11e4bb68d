"""Whose turn a notification is: wake-ups that scale with the number of workers.

Every producer transaction that queues a delivery sends one NOTIFY, and every
worker LISTENs. Were each to claim on every notification, N workers would run N
claims per commit, N-1 of them empty. Instead each worker keeps the list of live
workers (``deliverer_presence``, refreshed every ``BEAT`` seconds) and acts only
on notifications whose payload, the producer's transaction id, hashes to itself.

Busy workers pass work on the same way, to the others: one that claimed all it
can while more is due wakes another ("more <worker> <n>"), chosen among the
others, and outcomes written at an endpoint where another worker was held back by
what this one holds wake that worker ("room <endpoint> <worker>"), so processes
share what one of them cannot take alone.

Nothing depends on the choice being right: a busy worker claims again as soon as
it has room, and every worker still polls (at most ``DELIVERER_POLL_INTERVAL``
apart), so a notification whose chosen worker just died waits at most that long.
"""

import asyncio
import contextlib
import zlib
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from deliverer.delivery.backoff import Backoff
from deliverer.delivery.connection import Reopening, answered_within
from deliverer.delivery.queries import QUERIES
from deliverer.ops.metrics import METRICS
from deliverer.settings import Settings
from deliverer.storage import connections

log = structlog.get_logger("deliverer.worker")

CHANNEL = "outbox_delivery"
BEAT = 5.0  # seconds between a worker's presence heartbeats
ALIVE_FOR = 3 * BEAT  # a worker not seen for this long is no longer chosen
FORGET_AFTER = 60.0  # rows of workers gone this long are deleted
TURN = 64  # consecutive transaction ids that wake the same worker


def chosen(payload: str, workers: list[str]) -> str | None:
    """The worker whose turn this notification is: the same answer in every process (not Python's
    salted ``hash``). None when there is no list yet, or no payload (an older producer): wake."""
    if not workers or not payload:
        return None
    # Consecutive transaction ids share a turn: notifications in quick succession then
    # wake one worker, whose claims take them together, instead of several workers whose
    # overlapping claims take each other's deliveries and leave the rest empty (0.23 empty
    # claims per event with 8 workers when each id had a turn of its own, 0.11 so).
    key = str(int(payload) // TURN) if payload.isdigit() else payload
    return workers[zlib.crc32(key.encode()) % len(workers)]


class Listener:
    """One worker's LISTEN connection: sets ``wake`` for the notifications that are its turn, beats
    its presence between them, and reconnects with backoff, whatever the database does."""

    def __init__(self, settings: Settings, worker_id: str, wake: asyncio.Event,
                 on_room: Callable[[str], None] = lambda endpoint_id: None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.wake = wake
        self.on_room = on_room  # another worker handed over slots at an endpoint where this one waits
        self.peers: list[str] = []  # the live workers, this one included, as of the last heartbeat

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                # LISTEN is session state: this connection must keep its server session
                # (DELIVERER_LISTEN_DATABASE_URL), unlike every other one.
                async with await connections.aconnect(self.settings, f"deliverer {self.worker_id}",
                                                      listen=True) as conn:
                    async with answered_within(self.settings.db_timeout):
                        await conn.execute(f"LISTEN {CHANNEL}")
                    backoff.reset()
                    self.wake.set()  # anything committed while not listening
                    await self._hear(conn)
            except psycopg.Error as exc:
                METRICS.db_errors.labels("listen").inc()
                log.warning("notification connection lost; reconnecting", error=str(exc).strip(),
                            retry_in_s=backoff.current)
                await backoff.sleep()

    async def _hear(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            # The heartbeat is also how a partition is noticed here: notifications just stop coming.
            async with answered_within(self.settings.db_timeout):
                cur = await conn.execute(QUERIES["presence_heartbeat"], {
                    "worker_id": self.worker_id, "alive_for": ALIVE_FOR, "forget_after": FORGET_AFTER})
                row = await cur.fetchone()
            self.peers = row[0] if row else []
            async for note in conn.notifies(timeout=BEAT):
                self._heard(note.payload)

    def _heard(self, payload: str) -> None:
        """Wake for the notifications that are this worker's turn. A producer's (its transaction id)
        is chosen among all workers; one a busy worker passes on ("more <sender> <n>") among the
        workers other than the sender; slots handed over ("room <endpoint> <worker>") wake that worker."""
        kind, _, rest = payload.partition(" ")
        if kind == "room":
            endpoint_id, _, wanter = rest.partition(" ")
            if wanter != self.worker_id:
                return
            self.on_room(endpoint_id)
        elif kind == "more":
            sender, _, _ = rest.partition(" ")
            others = [w for w in self.peers if w != sender]
            if sender == self.worker_id or chosen(payload, others) not in (None, self.worker_id):
                return
        elif chosen(payload, self.peers) not in (None, self.worker_id):
            return
        self.wake.set()

    async def pass_on(self, conn: psycopg.AsyncConnection[Any], sequence: int) -> None:
        """This worker cannot take all that is due: wake another one to claim the rest."""
        await conn.execute(QUERIES["pass_on_wake_up"], {"payload": f"more {self.worker_id} {sequence}"})

    async def leave(self, db: Reopening) -> None:
        """Leave the list of live workers, so notifications stop choosing this one. Best effort: a
        worker stopping without its database is forgotten when its heartbeats stop."""
        with contextlib.suppress(psycopg.Error):
            async with db.answered():
                await (await db.get()).execute(QUERIES["presence_leave"], {"worker_id": self.worker_id})
