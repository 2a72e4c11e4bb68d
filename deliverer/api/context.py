"""What the app and each request carry, set by ``app`` and read by the handlers: the database
pool, the settings, the sender of test events, the process's health, and the org and key a
request was authenticated as."""

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from deliverer.history.ping import Sender
from deliverer.ops.probes import Heartbeat
from deliverer.settings import Settings

POOL: web.AppKey[AsyncConnectionPool] = web.AppKey("pool", AsyncConnectionPool)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
SENDER: web.AppKey[Sender] = web.AppKey("sender", Sender)
ORG: web.RequestKey[str] = web.RequestKey("org_id", str)
KEY_ID: web.RequestKey[str] = web.RequestKey("key_id", str)


class Health:
    """What the probe server reports for the API process."""

    def __init__(self) -> None:
        self.heartbeat = Heartbeat()
        self.ready = False


HEALTH: web.AppKey[Health] = web.AppKey("health", Health)
