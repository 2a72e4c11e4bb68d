"""A database connection each worker loop owns and reopens after a failure.

The claim, record and listen loops each keep their own connection, so a slow
outcome write never delays a claim. A loop that hits a database error closes its
connection; the next use opens a fresh one.

A network that drops packets (a partition, a dead NAT entry, a failed-over address)
answers nothing and resets nothing: a statement then waits as long as TCP retransmits,
for many minutes. So every statement of the loops runs ``answered_within`` the
DELIVERER_DB_TIMEOUT; past it the connection is given up as lost, like one that
broke. psycopg first tries to cancel the statement, for at most 10 s more: a worker
notices a partition within DELIVERER_DB_TIMEOUT + 10 s.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from deliverer.settings import Settings
from deliverer.storage import connections


class Unanswered(psycopg.OperationalError):
    """The database did not answer within DELIVERER_DB_TIMEOUT: handled like a connection that broke."""


@contextlib.asynccontextmanager
async def answered_within(seconds: float) -> AsyncIterator[None]:
    """Raise ``Unanswered`` if the statements inside take longer than ``seconds`` in all."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise Unanswered(f"no answer from the database within {seconds:g} s "
                         "(DELIVERER_DB_TIMEOUT): a partition, or a server that hangs") from None


class Reopening:
    def __init__(self, settings: Settings, application_name: str) -> None:
        self.settings = settings
        self.application_name = application_name
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await connections.aconnect(self.settings, self.application_name)
        return self._conn

    def answered(self) -> contextlib.AbstractAsyncContextManager[None]:
        """``answered_within`` this worker's DELIVERER_DB_TIMEOUT."""
        return answered_within(self.settings.db_timeout)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
