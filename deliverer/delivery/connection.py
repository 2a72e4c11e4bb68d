"""A database connection each worker loop owns and reopens after a failure.

The claim, record and listen loops each keep their own connection, so a slow
outcome write never delays a claim. A loop that hits a database error closes its
connection; the next use opens a fresh one.
"""

from typing import Any

import psycopg

from deliverer.settings import Settings
from deliverer.storage import connections


class Reopening:
    def __init__(self, settings: Settings, application_name: str) -> None:
        self.settings = settings
        self.application_name = application_name
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await connections.aconnect(self.settings, self.application_name)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
