"""Scenario 3: receivers that misbehave in every way the matrix lists.

Two passes over the same receivers. With an injected clock, an in-process
worker walks each case through its whole schedule: every attempt records the
case's error class and status, and each next attempt starts exactly when the
schedule says (later when a 429/503 asked for it, capped, never sooner). Then
a real worker process gets one delivery per case next to a stream of healthy
deliveries: it records the same outcomes, computes the same next attempt,
delivers every healthy event, and exits cleanly, with no error logged.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

import outbox
from chaos import harness
from chaos.queries import QUERIES
from chaos.receivers import Case, Misbehaving
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.delivery.schedule import SEED_DELAYS, honour_retry_after
from deliverer.delivery.worker import Worker
from deliverer.dev.clock import FakeClock
from deliverer.dev.receiver import Receiver
from deliverer.dev.waiting import aeventually
from deliverer.settings import Settings

LIVE_TIMEOUT = 3.0  # generous: the receivers share a busy machine, and a fast answer must never time out
CLOCK_TIMEOUT = 1.5
LEASE = 30.0


def expected_gaps(case: Case) -> list[float]:
    """Seconds between attempt starts: the seed's delays, pushed later by Retry-After up to its cap."""
    if case.error_class is None or case.http_status == 410:
        return []  # delivered, or Gone: the receiver asked us to stop
    return [float(honour_retry_after(d, case.retry_after)) for d in SEED_DELAYS]  # type: ignore[arg-type]


@dataclass(frozen=True)
class Attempt:
    url: str
    attempt: int
    kind: str
    error_class: str | None
    http_status: int | None
    started_at: datetime | None
    recorded_at: datetime
    next_attempt_at: datetime | None


def _attempts(dsn: str, org_id: str) -> list[Attempt]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [Attempt(*row) for row in conn.execute(QUERIES["attempts_by_url"], {"org_id": org_id})]


def _final_states(dsn: str) -> dict[str, tuple[str, int]]:
    """URL -> (state, attempt) of each delivery."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {url: (state, attempt) for _, _, url, state, attempt in conn.execute(QUERIES["final_states"])}


async def _with_injected_clock(dsn: str, cases: list[Case], report: Report) -> None:
    for case in cases:
        harness.add_endpoint(dsn, case.url, "org_clock")
    with psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, "webhook.test", harness.message(), org_id="org_clock")
        conn.commit()
    clock = FakeClock()
    settings = Settings(database_url=dsn, allow_insecure_urls=True, http_timeout=CLOCK_TIMEOUT,
                        lease_seconds=LEASE, worker_id="matrix-clock").validated()
    starts: dict[str, list] = {case.url: [] for case in cases}
    async with Worker(settings, clock=clock) as worker:
        for _ in range(100):
            wait = await worker.seconds_until_due()
            if wait is None:
                break
            if wait > 0:
                clock.advance(wait - 0.001)
                early = await worker.run_once()
                report.check(early == [], f"claimed {len(early)} deliveries before they were due")
                clock.advance(0.001)
            for result in await worker.run_once():
                starts[result.claimed.url].append(result.started_at)
    states = _final_states(dsn)
    outcomes: dict[str, set[tuple[str | None, int | None]]] = {}
    for a in _attempts(dsn, "org_clock"):
        if a.kind == "attempt_finished":
            outcomes.setdefault(a.url, set()).add((a.error_class, a.http_status))
    for case in cases:
        gaps = [(b - a).total_seconds() for a, b in zip(starts[case.url], starts[case.url][1:], strict=False)]
        report.check(gaps == expected_gaps(case), f"{case.name}: gaps {gaps}, expected {expected_gaps(case)}")
        report.check(outcomes.get(case.url) == {(case.error_class, case.http_status)},
                     f"{case.name}: recorded {outcomes.get(case.url)}, expected {(case.error_class, case.http_status)}")
        final = ("delivered", 1) if case.error_class is None else ("failed", len(expected_gaps(case)) + 1)
        report.check(states[case.url] == final, f"{case.name}: ended {states[case.url]}, expected {final}")
        if case.error_class is None:
            report.expected.add((event_id, case.name))
        if states[case.url][0] == "delivered":
            report.delivered.add((event_id, case.name))


async def run(dsn: str, workdir: Path, *, healthy_events: int = 500) -> Report:
    started = time.monotonic()
    report = Report("3 receiver misbehaviour", fault_kind="misbehaving receivers")
    matrix = await Misbehaving(slow_seconds=LIVE_TIMEOUT + 2).start()
    sink = await Receiver(keep_content=False).start()
    worker = WorkerProcess(dsn, "matrix-live", workdir, DELIVERER_HTTP_TIMEOUT=str(LIVE_TIMEOUT),
                           DELIVERER_LEASE_SECONDS=str(LEASE), DELIVERER_POLL_INTERVAL="0.2")
    try:
        report.faults = len(matrix.cases)
        await _with_injected_clock(dsn, matrix.cases, report)

        for case in matrix.cases:
            harness.add_endpoint(dsn, case.url, "org_live")
        harness.add_endpoint(dsn, sink.url("/healthy"), "org_live")
        harness.add_endpoint(dsn, sink.url("/healthy"), "org_healthy")
        await worker.start()
        [live_event] = await harness.publish(dsn, 1, "org_live")
        healthy = await harness.publish(dsn, healthy_events, "org_healthy", batch=50)
        report.published = 1 + healthy_events + 1
        report.expected |= {(e, "/healthy") for e in [live_event, *healthy]}
        report.expected.add((live_event, "endless body, 200 (live)"))

        await sink.wait_until(lambda: len(sink.delivered()) >= healthy_events + 1, "the healthy deliveries",
                              timeout=60)
        first: dict[str, Attempt] = {}
        second: dict[str, Attempt] = {}

        def seen() -> None:
            for a in _attempts(dsn, "org_live"):
                if a.attempt == 1 and a.kind == "attempt_finished":
                    first[a.url] = a
                if a.attempt == 2 and a.kind == "attempt_finished":
                    second[a.url] = a

        def all_recorded() -> bool:
            seen()
            return all(case.url in first for case in matrix.cases)
        await aeventually(all_recorded, "a first outcome for every misbehaving receiver", timeout=60, interval=0.2)
        for case in matrix.cases:
            a = first[case.url]
            report.check((a.error_class, a.http_status) == (case.error_class, case.http_status),
                         f"live {case.name}: recorded {(a.error_class, a.http_status)}")
            gaps = expected_gaps(case)
            want = None if not gaps else timedelta(seconds=gaps[0])
            got = None if a.next_attempt_at is None else a.next_attempt_at - a.recorded_at
            report.check(got == want, f"live {case.name}: next attempt after {got}, expected {want}")
            if case.error_class is None and a.next_attempt_at is None:
                report.delivered.add((live_event, "endless body, 200 (live)"))

        # The five-second retries come round: each starts no sooner than its recorded time.
        soon = [c for c in matrix.cases if expected_gaps(c)[:1] == [SEED_DELAYS[0]]]

        def all_retried() -> bool:
            seen()
            return all(c.url in second for c in soon)
        await aeventually(all_retried, "the second attempts", timeout=60, interval=0.2)
        for case in soon:
            due = first[case.url].next_attempt_at
            begun = second[case.url].started_at
            report.check(due is not None and begun is not None and begun >= due,
                         f"live {case.name}: attempt 2 started at {begun}, before it was due at {due}")
        report.check(worker.running, "the worker died")
        report.check(matrix.hits["/redirect-target"] == 0, "a redirect was followed")
        report.check(matrix.body_cut_off["/huge"] >= 1, "the huge body was read to the end")
        code = await worker.stop()
        report.check(code == 0, f"the worker exited with {code}")
        log = worker.log()
        report.check('"level": "error"' not in log and "Traceback" not in log,
                     f"the worker logged an error:\n{log[-3000:]}")
        report.delivered |= sink.delivered()
    finally:
        worker.kill()
        await sink.stop()
        await matrix.stop()
    report.notes.append(f"cases: {', '.join(c.name for c in matrix.cases)}")
    return harness.finish(report, dsn, sink.answered(), set(), started)
