"""Whose turn a producer's commit is: wake-ups that scale with the number of workers.

Every producer transaction that queues a delivery sends one NOTIFY, and every
worker LISTENs. Were each to claim on every notification, N workers would run N
claims per commit, N-1 of them empty. Instead each worker keeps the list of live
workers (``deliverer_presence``, refreshed every ``BEAT`` seconds) and acts only
on notifications whose payload, the producer's transaction id, hashes to itself.

Nothing depends on the choice being right: a busy worker claims again as soon as
it has room, and every worker still polls (at most ``DELIVERER_POLL_INTERVAL``
apart), so a notification whose chosen worker just died waits at most that long.
"""

import zlib

BEAT = 5.0  # seconds between a worker's presence heartbeats
ALIVE_FOR = 3 * BEAT  # a worker not seen for this long is no longer chosen
FORGET_AFTER = 60.0  # rows of workers gone this long are deleted


def chosen(payload: str, workers: list[str]) -> str | None:
    """The worker whose turn this notification is: the same answer in every process (not Python's
    salted ``hash``). None when there is no list yet, or no payload (an older producer): wake."""
    if not workers or not payload:
        return None
    return workers[zlib.crc32(payload.encode()) % len(workers)]
