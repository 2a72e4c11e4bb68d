"""Scenario 6: the retry schedule as a property, over hypothesis-generated failure patterns.

A pattern says what happens on each attempt: success, a failing status (429
and 503 with or without Retry-After), or the worker dying after its claim (the
lease runs out). An in-process worker with an injected clock steps to each due
time. For every pattern: never more than six attempts, each gap is the seed's
delay (stretched by Retry-After up to its cap, or the lease after a crash), no
claim happens a millisecond early, and the final state is what the pattern
implies.
"""

import asyncio
import itertools
import time
from dataclasses import dataclass

import psycopg
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import outbox
from chaos import harness, integrity
from chaos.queries import QUERIES
from chaos.report import Report
from deliverer.delivery.schedule import SEED_DELAYS, honour_retry_after
from deliverer.delivery.worker import Worker
from deliverer.dev.clock import FakeClock
from deliverer.dev.receiver import Receiver
from deliverer.settings import Settings

LEASE = 30.0


@dataclass(frozen=True)
class Step:
    """What happens on one attempt."""

    status: int  # 200, or the failing status; 0 means the worker dies after claiming
    retry_after: int | None = None

    def __str__(self) -> str:
        if self.status == 0:
            return "crash"
        return f"{self.status}" + (f"+RA{self.retry_after}" if self.retry_after is not None else "")


steps = st.one_of(
    st.just(Step(200)),
    st.just(Step(0)),
    st.sampled_from([500, 404, 410]).map(Step),
    st.builds(Step, st.sampled_from([429, 503]), st.one_of(st.none(), st.integers(0, 10_000))),
)
patterns = st.lists(steps, min_size=1, max_size=8)


def model(pattern: list[Step]) -> tuple[list[float], tuple[str, int]]:
    """The attempt start offsets and the final (state, attempt) the contract implies for a pattern."""
    padded = itertools.chain(pattern, itertools.repeat(Step(500)))
    offsets, now = [0.0], 0.0
    for attempt, step in enumerate(padded, start=1):
        if step.status == 200:
            return offsets, ("delivered", attempt)
        if step.status == 410:
            return offsets, ("failed", attempt)  # Gone: final, and the endpoint is disabled
        if attempt == len(SEED_DELAYS) + 1:
            return offsets, ("failed", attempt)
        if step.status == 0:
            now += LEASE
        else:
            asked = step.retry_after if step.status in (429, 503) else None
            now += float(honour_retry_after(SEED_DELAYS[attempt - 1], asked))  # type: ignore[arg-type]
        offsets.append(now)
    raise AssertionError("unreachable")


@dataclass
class Checked:
    event_id: str
    expected: tuple[str, int]
    final: tuple[str, int] | None
    problems: list[str]


async def check_pattern(dsn: str, pattern: list[Step], n: int) -> Checked:
    """Run one pattern end to end against the model."""
    problems: list[str] = []
    sink = await Receiver(keep_content=False).start()
    path, org_id = f"/p{n}", f"org_p{n}"

    async def respond(request: web.Request, _: int) -> web.StreamResponse:
        attempt = int(request.headers["X-DocExtract-Delivery-Attempt"])
        step = pattern[attempt - 1] if attempt <= len(pattern) else Step(500)
        headers = {} if step.retry_after is None else {"Retry-After": str(step.retry_after)}
        return web.Response(status=step.status, headers=headers)
    sink.behave(path, respond)
    try:
        harness.add_endpoint(dsn, sink.url(path), org_id)
        with psycopg.connect(dsn) as conn:
            event_id = outbox.publish(conn, "webhook.test", harness.message(n), org_id=org_id)
            conn.commit()
        clock = FakeClock()
        begin = clock()
        offsets: list[float] = []
        config = Settings(database_url=dsn, allow_insecure_urls=True, lease_seconds=LEASE,
                          worker_id=f"property-{n}").validated()
        async with Worker(config, clock=clock) as worker:
            for _ in range(20):
                wait = await worker.seconds_until_due()
                if wait is None:
                    break
                if wait > 0:
                    clock.advance(wait - 0.001)
                    if await worker.claim(10):
                        problems.append(f"claimed {wait - 0.001:.3f} s into a {wait:.3f} s wait")
                    clock.advance(0.001)
                claimed = await worker.claim(10)
                if not claimed:
                    continue
                if len(claimed) > 1:
                    problems.append(f"claimed {len(claimed)} deliveries, expected 1")
                    break
                [c] = claimed
                if c.expired_lease_of is not None:
                    # An abandoned last attempt: taken over only to be written failed, not sent.
                    await worker.record([await worker.attempt(c)])
                    continue
                offsets.append((clock() - begin).total_seconds())
                step = pattern[c.attempt - 1] if c.attempt <= len(pattern) else Step(500)
                if step.status == 0:
                    continue  # the worker dies: no send, no outcome; the lease runs out
                await worker.record([await worker.attempt(c)])
        with psycopg.connect(dsn, autocommit=True) as conn:
            [final] = [(state, attempt) for _, _, url, state, attempt in conn.execute(QUERIES["final_states"])
                       if url == sink.url(path)]
        want_offsets, want_final = model(pattern)
        if len(offsets) > len(SEED_DELAYS) + 1:
            problems.append(f"{len(offsets)} attempts")
        if offsets != want_offsets:
            problems.append(f"attempts at {offsets}, expected {want_offsets}")
        if final != want_final:
            problems.append(f"ended {final}, expected {want_final}")
        sends = sum(1 for step in itertools.islice(itertools.chain(pattern, itertools.repeat(Step(500))),
                                                   len(want_offsets)) if step.status != 0)
        if len(sink.answered()) != sends:
            problems.append(f"the receiver got {len(sink.answered())} requests, expected {sends}")
    finally:
        await sink.stop()
    return Checked(event_id, want_final, final, [f"pattern {[str(s) for s in pattern]}: {p}" for p in problems])


def run(dsn: str, *, examples: int = 200) -> Report:
    """Check ``examples`` generated patterns; synchronous, because hypothesis drives the loop."""
    started = time.monotonic()
    report = Report("6 schedule property", fault_kind="failure patterns")
    counter = itertools.count()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(patterns)
    def each(pattern: list[Step]) -> None:
        checked = asyncio.run(check_pattern(dsn, pattern, next(counter)))
        report.faults += sum(1 for s in pattern if s.status != 200)
        if checked.expected[0] == "delivered":
            report.expected.add((checked.event_id, "model: delivered"))
        if checked.final is not None and checked.final[0] == "delivered":
            report.delivered.add((checked.event_id, "model: delivered"))
        assert not checked.problems, checked.problems

    try:
        each()
    except Exception as exc:  # hypothesis reports several distinct failures as one ExceptionGroup
        failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
        report.problems += [str(failure) for failure in failures]
    report.published = next(counter)
    report.problems += integrity.log_problems(dsn)
    report.wall_s = time.monotonic() - started
    return report
