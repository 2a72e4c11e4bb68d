"""The job every other queue runs for the benchmark: sign an event as the deliverer does and POST it.

A job is a JSON object: ``url``, ``secret`` (plain ``whsec_…``), ``event_id``,
``event_type``, ``delivery_id`` and ``body``, the exact JSON text the
deliverer sends. The headers come from the deliverer's own
``deliverer.delivery.sign.headers`` (the hex HMAC-SHA256 of the body and the
Standard Webhooks signature); the POST goes through one aiohttp session with
keep-alive connections and the deliverer's 5 s timeout. Used by
bench/pgqueuer_worker.py and bench/floor_worker.py; bench/peers/graphile_worker.js
does the same in Node.
"""

import time
from typing import Any

import aiohttp

from deliverer.delivery import sign

TIMEOUT = 5.0


def session(connections: int) -> aiohttp.ClientSession:
    """Up to ``connections`` keep-alive connections, as many as the worker has sends in flight."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
                                 timeout=aiohttp.ClientTimeout(total=TIMEOUT))


async def deliver(client: aiohttp.ClientSession, job: dict[str, Any]) -> bool:
    """Whether the receiver answered 2xx; never raises for the receiver's sake."""
    body = job["body"].encode()
    headers = sign.headers(secret=job["secret"], body=body, event_id=job["event_id"], event_type=job["event_type"],
                           delivery_id=job["delivery_id"], attempt=1, timestamp=int(time.time()))
    try:
        async with client.post(job["url"], data=body, headers=headers) as response:
            await response.read()
            return 200 <= response.status < 300
    except (aiohttp.ClientError, TimeoutError):
        return False
