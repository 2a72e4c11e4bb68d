"""A producer process for the latency scenario: one event per transaction on a fixed schedule.

``python -m bench.producer DSN RATE SECONDS START INDEX STRIDE`` commits events
``INDEX, INDEX + STRIDE, …`` of a schedule where event i is due at
``START + i / RATE`` (CLOCK_MONOTONIC seconds, shared by every process), so
several processes together keep one steady rate, and one that falls behind
catches up instead of drifting. It stops at ``START + SECONDS`` even if it is
behind (what it managed is the achieved rate), and prints one JSON object:
commit times and org indexes by event id, and the worst lateness. Event i goes to org
``i % 10`` (bench.database.ORGS), or with ``ORGS ZIPF_S`` after the six
arguments to one of ORGS orgs drawn from a Zipf distribution (bench.database.Zipf).

Why processes and blocking calls rather than one asyncio loop with many
connections: the commit time must be read the moment COMMIT returns. In one
busy event loop that moment is when the loop gets round to the coroutine,
which on a loaded 2-core machine was late enough to make latencies negative.
A blocking ``commit()`` followed by ``time.monotonic()`` has no such queue.
"""

import json
import sys
import time

import psycopg

import outbox
from bench.database import ORGS, Zipf, event_for


def produce(dsn: str, rate: float, seconds: float, start: float, index: int, stride: int,
            zipf: Zipf | None = None) -> dict[str, object]:
    committed: dict[str, float] = {}
    orgs: dict[str, int] = {}
    worst_lag = 0.0
    end = start + seconds
    with psycopg.connect(dsn) as conn:
        for i in range(index, int(rate * seconds), stride):
            due = start + i / rate
            if time.monotonic() >= end:
                break  # behind schedule: the rate achieved is what counts, not finishing the list
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            worst_lag = max(worst_lag, time.monotonic() - due)
            org_index = i % ORGS if zipf is None else zipf.pick(i)
            event = event_for(i, org_index)
            event_id = outbox.publish(conn, event.event_type, event.data, org_id=event.org_id)
            conn.commit()
            committed[event_id] = time.monotonic()
            orgs[event_id] = org_index
    return {"committed": committed, "orgs": orgs, "worst_lag": worst_lag}


if __name__ == "__main__":
    dsn, rate, seconds, start, index, stride = sys.argv[1:7]
    zipf = Zipf(int(sys.argv[7]), float(sys.argv[8])) if len(sys.argv) > 8 else None
    result = produce(dsn, float(rate), float(seconds), float(start), int(index), int(stride), zipf)
    print(json.dumps(result))
