"""Checks on the log after a scenario: append-only, consistent, complete, and every duplicate explained."""

from collections import defaultdict

import psycopg

from chaos.queries import QUERIES
from deliverer.dev.receiver import Received
from deliverer.history import projection
from outbox.ids import delivery_public_id

TAMPERING = ["tamper_update_log", "tamper_delete_log", "tamper_truncate_log",
             "tamper_update_event", "tamper_delete_event", "tamper_truncate_event"]


def log_problems(dsn: str) -> list[str]:
    """The append-only tables refuse every change, and the queue equals the fold of the log."""
    problems = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in TAMPERING:
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute(QUERIES[name])
                problems.append(f"{name} was allowed")
            except psycopg.errors.InsufficientPrivilege:
                pass
        diff = projection.diff(conn)
        if diff:
            problems.append(f"delivery_queue differs from the log in {len(diff)} rows, e.g. {diff[:2]}")
    return problems


def attempt_problems(dsn: str, receipts: list[Received], interrupted: set[str]) -> tuple[int, list[str], list[str]]:
    """Compare what receivers got with the log; returns (duplicates, explanations, problems).

    Every attempt a receiver saw must be in the log, and every attempt in the log
    must be closed by exactly one outcome. A duplicate is a second 2xx receipt of
    one delivery; it is explained when the extra attempt was closed as abandoned
    (lease expired after a worker in ``interrupted`` died, or handed back at
    shutdown) or reported late, never when it was recorded as a plain outcome.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        facts = conn.execute(QUERIES["attempt_facts"]).fetchall()
    # Each attempt is logged once, when it ends, with the worker that made it (a late
    # result is reported by that worker too).
    worker_of: dict[tuple[str, int], str] = {}
    closed: dict[tuple[str, int], list[tuple[str, str, str | None]]] = defaultdict(list)
    late: set[tuple[str, int]] = set()
    for delivery_id, attempt, kind, outcome, worker_id, error_class, *_ in facts:
        key = (delivery_public_id(delivery_id), attempt)
        worker_of.setdefault(key, worker_id)
        if kind == "late_result":
            late.add(key)
        else:
            closed[key].append((kind, outcome, error_class))
    problems = []
    unclosed = [key for key in worker_of if len(closed[key]) != 1]
    if unclosed:
        problems.append(f"{len(unclosed)} attempts without exactly one outcome in the log, e.g. {unclosed[:3]}")
    unlogged = {(r.delivery_id, r.attempt) for r in receipts} - worker_of.keys()
    if unlogged:
        problems.append(f"{len(unlogged)} attempts reached a receiver but are not in the log, e.g. "
                        f"{sorted(unlogged)[:3]}")

    by_delivery: dict[str, list[int]] = defaultdict(list)
    for r in receipts:
        if r.status is not None and 200 <= r.status < 300:
            by_delivery[r.delivery_id].append(r.attempt)
    duplicates, explained, unexplained = 0, [], []
    for delivery_id, attempts in by_delivery.items():
        if len(attempts) < 2:
            continue
        duplicates += len(attempts) - 1
        recorded = [a for a in attempts if ("attempt_finished", "succeeded", None) in closed[(delivery_id, a)]]
        extras = list(attempts)
        if recorded:
            extras.remove(recorded[0])
        for attempt in extras:
            key = (delivery_id, attempt)
            why = _why(key, worker_of.get(key), closed[key], key in late, interrupted)
            if why:
                explained.append(f"{delivery_id} attempt {attempt}: {why}")
            else:
                unexplained.append(f"{delivery_id} attempt {attempt} by {worker_of.get(key)}: {closed[key]}")
    if unexplained:
        problems.append(f"{len(unexplained)} duplicates not explained by an interrupted send, e.g. {unexplained[:5]}")
    return duplicates, explained, problems


def _why(key: tuple[str, int], worker: str | None, closing: list[tuple[str, str, str | None]], was_late: bool,
         interrupted: set[str]) -> str | None:
    kinds = {(kind, error_class) for kind, _, error_class in closing}
    if ("attempt_abandoned", "lease_expired") in kinds and worker in interrupted:
        return f"worker {worker} was killed after sending, before recording; logged attempt_abandoned (lease_expired)"
    if ("attempt_abandoned", "shutdown") in kinds:
        return f"worker {worker} handed it back at shutdown mid-send; logged attempt_abandoned (shutdown)"
    if was_late:
        return f"worker {worker} reported after its lease was taken over; logged late_result"
    return None
