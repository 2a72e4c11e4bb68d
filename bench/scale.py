"""The scenarios of horizontal scale: one hot endpoint, other queues on the same job, the database's
floor, a realistic mix of receivers, and idle wake-ups. Each returns plain dicts, like bench.scenarios.

- :func:`hot`: the drain of N events over 10 endpoints and the same N events to one endpoint.
- :func:`peers`: the same signed-webhook jobs through graphile-worker and pgqueuer (bench.queues).
- :func:`floor`: a minimal lease-and-delete queue, the floor of PostgreSQL CPU per delivery.
- :func:`mix`: 1,000 endpoints, Zipf traffic, log-normal receivers, 5% hanging and 5% failing.
- :func:`wakeups`: a paced producer with 8 deliverer processes against 2: empty claims per event.
- :func:`limits`: endpoints with max_in_flight and rate_limit set, 4 processes: what the sink saw.

The first three share one set of drains (:class:`Drains`): every system drains the same
N events once per repeat, with DRAIN_PROCESSES processes, so their figures and ratios
come from the same run whichever of the three scenarios asked first.
"""

import asyncio
import contextlib
import statistics
from collections.abc import Sequence
from typing import Any

import psycopg

import outbox
from bench import database, machine, queues, scenarios
from bench import sink as sink_module
from bench.database import ORGS, Zipf
from bench.deliverers import Deliverers
from bench.scenarios import Bench, medians, percentile

DRAIN_PROCESSES = 2
DELIVERER, DELIVERER_HOT, DELIVERER_HOT_MATCHED = "deliverer", "deliverer hot", "deliverer hot matched"
"""The deliverer's drains: over ORGS (10) endpoints, every event to one endpoint at the default
max_in_flight, and to one endpoint whose max_in_flight is the peers' (HOT_MATCHED_MAX_IN_FLIGHT)."""
HOT_MATCHED_MAX_IN_FLIGHT = queues.GRAPHILE_WORKER["concurrentJobs"] * DRAIN_PROCESSES
"""graphile-worker's requests open at once to the sink in its drain: the same load on the receiver."""


class Drains:
    """Every system's drains of the same ``events``, ``repeat`` times, run once per benchmark run.

    Each system gets a template database, prepared the first time it is asked for
    (events published and staged); each drain runs in a fresh copy. Systems asked
    for together are interleaved repeat by repeat, so a ratio pairs runs close in time.
    """

    def __init__(self, bench: Bench, *, events: int, repeat: int) -> None:
        self.bench, self.events, self.repeat = bench, events, repeat
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.unavailable: dict[str, str] = {}
        self._templates: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        self._stack.close()

    async def ensure(self, names: Sequence[str]) -> None:
        todo = [n for n in names if n not in self.runs and n not in self.unavailable]
        for name in todo:
            await self._prepare(name)
        todo = [n for n in todo if n in self._templates]
        for _ in range(self.repeat):
            for name in todo:
                label = name.replace(" ", "_").replace("-", "_")
                with self.bench.server.database(label, template=self._templates[name]) as dsn:
                    self.runs.setdefault(name, []).append(await self._drain(name, dsn))

    async def _prepare(self, name: str) -> None:
        queue = queues.QUEUES[name]() if name in queues.QUEUES else None
        why = queue.available() if queue is not None else None
        if why:
            self.unavailable[name] = why
            return
        template = self._stack.enter_context(
            self.bench.server.database(name.replace(" ", "_").replace("-", "_") + "_template"))
        if queue is not None:
            await queue.prepare(template, queues.jobs(self.bench.sink, self.events))
        else:
            orgs = 1 if name in (DELIVERER_HOT, DELIVERER_HOT_MATCHED) else ORGS
            database.add_endpoints(template, self.bench.hooks(orgs),
                                   max_in_flight=HOT_MATCHED_MAX_IN_FLIGHT if name == DELIVERER_HOT_MATCHED else None)
            database.stage(template, self.events, orgs)
        self._templates[name] = template

    async def _drain(self, name: str, dsn: str) -> dict[str, Any]:
        if name in queues.QUEUES:
            return await queues.measure_drain(self.bench.sink, queues.QUEUES[name](), dsn, DRAIN_PROCESSES,
                                              self.events)
        result = await scenarios.measure_drain(self.bench, dsn, DRAIN_PROCESSES, self.events)
        result["worker_cpu_ms_per_1000"] = result["deliverer_cpu_ms_per_1000"]
        result["postgres_worker_backends_cpu_ms_per_1000"] = result["postgres_deliverer_backends_cpu_ms_per_1000"]
        return result

    def median(self, name: str) -> dict[str, Any]:
        if name in self.unavailable:
            return {"unavailable": self.unavailable[name]}
        return medians(self.runs[name])

    def ratio(self, a: str, b: str, key: str) -> float | None:
        """Median over repeats of a's ``key`` / b's, repeat by repeat; None if either did not run."""
        if a not in self.runs or b not in self.runs:
            return None
        ratios = [x[key] / y[key] for x, y in zip(self.runs[a], self.runs[b], strict=True) if y[key]]
        return statistics.median(ratios) if ratios else None  # a quick run may measure 0 CPU ticks

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        return {"events": self.events, "processes": DRAIN_PROCESSES, "repeat": self.repeat,
                "by_system": {n: self.median(n) for n in names}, "runs": {n: self.runs.get(n, []) for n in names}}


# 7. Hot endpoint ---------------------------------------------------------------------


async def hot(drains: Drains) -> dict[str, Any]:
    """The drain over 10 endpoints and the same events all to one endpoint, at the default max_in_flight
    and at the peers' concurrency, in the same run."""
    names = [DELIVERER, DELIVERER_HOT, DELIVERER_HOT_MATCHED]
    await drains.ensure(names)
    ratios = {hot: {"rate_ratio": drains.ratio(hot, DELIVERER, "deliveries_per_s"),
                    "postgres_cpu_ratio": drains.ratio(hot, DELIVERER, "postgres_cpu_ms_per_1000"),
                    "deliverer_cpu_ratio": drains.ratio(hot, DELIVERER, "deliverer_cpu_ms_per_1000")}
              for hot in (DELIVERER_HOT, DELIVERER_HOT_MATCHED)}
    return {**drains.summary(names), "matched_max_in_flight": HOT_MATCHED_MAX_IN_FLIGHT, "vs_10_endpoints": ratios}


# 8. Peers ------------------------------------------------------------------------------


PEERS = ("graphile-worker", "pgqueuer")


async def peers(drains: Drains) -> dict[str, Any]:
    """graphile-worker and pgqueuer draining the same jobs, beside the deliverer's two drains."""
    names = [DELIVERER, DELIVERER_HOT, DELIVERER_HOT_MATCHED, *PEERS]
    await drains.ensure(names)
    return {**drains.summary(names), "settings": {"graphile-worker": queues.GRAPHILE_WORKER,
                                                  "pgqueuer": queues.PGQUEUER},
            "rate_vs_deliverer": {p: drains.ratio(p, DELIVERER, "deliveries_per_s") for p in PEERS},
            "hot_vs_graphile_worker": {hot: drains.ratio(hot, "graphile-worker", "deliveries_per_s")
                                       for hot in (DELIVERER_HOT, DELIVERER_HOT_MATCHED)},
            "postgres_cpu_vs_deliverer": {p: drains.ratio(p, DELIVERER, "postgres_cpu_ms_per_1000") for p in PEERS}}


# 9. Floor ------------------------------------------------------------------------------


async def floor(drains: Drains) -> dict[str, Any]:
    """PostgreSQL CPU per delivery of a minimal lease-and-delete queue: the deliverer's over it and graphile's."""
    names = [DELIVERER, DELIVERER_HOT, DELIVERER_HOT_MATCHED, "graphile-worker", "floor"]
    await drains.ensure(names)
    key = "postgres_cpu_ms_per_1000"
    return {**drains.summary(names), "settings": queues.FLOOR,
            "deliverer_vs_floor": drains.ratio(DELIVERER, "floor", key),
            "deliverer_hot_vs_floor": drains.ratio(DELIVERER_HOT, "floor", key),
            "deliverer_hot_matched_vs_floor": drains.ratio(DELIVERER_HOT_MATCHED, "floor", key),
            "deliverer_vs_graphile_worker": drains.ratio(DELIVERER, "graphile-worker", key),
            "deliverer_hot_vs_graphile_worker": drains.ratio(DELIVERER_HOT, "graphile-worker", key),
            "deliverer_hot_matched_vs_graphile_worker": drains.ratio(DELIVERER_HOT_MATCHED, "graphile-worker", key),
            "graphile_worker_vs_floor": drains.ratio("graphile-worker", "floor", key)}


# 10. Realistic mix --------------------------------------------------------------------


MIX_ENDPOINTS = 1000
MIX_ZIPF_S = 1.1
MIX_MEDIAN_MS, MIX_SIGMA = 20, 1.682  # log-normal: p99 = median * exp(2.326 * sigma) = 1 s
MIX_EVERY, MIX_HANGS, MIX_FAILS = 20, 6, 12
"""Endpoint i hangs if i % 20 == 6, answers 500 if i % 20 == 12: 5% each, spread over the ranks
(the 7th busiest endpoint hangs, the 13th fails), not by chance on the busiest one."""
MIX_PROCESSES = 4
MIX_GRACE = 30.0  # seconds after the producers stop for the healthy deliveries still due


def _mix_path(index: int, *, mixed: bool) -> str:
    if mixed and index % MIX_EVERY == MIX_HANGS:
        return f"/slow/60/{index}"  # past any timeout: the deliverer's 5 s cuts it off
    if mixed and index % MIX_EVERY == MIX_FAILS:
        return f"/status/500/{index}"
    return f"/lognormal/{MIX_MEDIAN_MS}/{MIX_SIGMA}/{index}"


def _healthy(index: int) -> bool:
    return index % MIX_EVERY not in (MIX_HANGS, MIX_FAILS)


async def _mix_run(bench: Bench, *, mixed: bool, rate: float, seconds: float, endpoints: int) -> dict[str, Any]:
    with bench.server.database("mix_mixed" if mixed else "mix_healthy") as dsn:
        database.add_endpoints(dsn, [bench.sink.url(_mix_path(i, mixed=mixed)) for i in range(endpoints)])
        # A short grace at the end: the hanging sends still open then are of no interest.
        async with Deliverers(dsn, MIX_PROCESSES, DELIVERER_SHUTDOWN_GRACE="1") as deliverers:
            await bench.sink.reset()
            deliverers_before, pg_before = deliverers.cpu(), machine.postgres_cpu()
            produced = await scenarios.produce(dsn, rate, seconds, zipf=(endpoints, MIX_ZIPF_S))
            healthy = {e for e, org in produced.orgs.items() if _healthy(org)}
            await bench.sink.wait_for(len(healthy) if mixed else len(produced.committed), MIX_GRACE,
                                      prefix="/lognormal/")
            deliverers_cpu, pg_cpu = deliverers.cpu() - deliverers_before, machine.postgres_cpu()
            rss = deliverers.peak_rss_mib()
            records, stats = await bench.sink.dump(), await bench.sink.stats()
    commits = sorted(produced.committed.values())
    first_commit, last_commit = commits[0], commits[-1]
    received: dict[str, float] = {}
    for _path, event_id, at in records:
        received.setdefault(event_id, at)
    in_window = sum(1 for e in healthy if e in received and received[e] <= last_commit)
    ms = sorted((received[e] - produced.committed[e]) * 1000 for e in healthy if e in received)
    peak_path = max(stats, key=lambda p: stats[p].peak)
    by_index = {int(path.rsplit("/", 1)[1]): s for path, s in stats.items()}
    hanging = [s.peak for i, s in by_index.items() if i % MIX_EVERY == MIX_HANGS]
    events = len(produced.committed)
    return {
        "events": events,
        "achieved_per_s": events / seconds,
        "healthy_events": len(healthy),
        "healthy_deliveries_per_s": in_window / (last_commit - first_commit),
        "healthy_offered_per_s": len(healthy) / (last_commit - first_commit),
        "healthy_delivered_by_last_commit": in_window / max(len(healthy), 1),
        "healthy_undelivered": len(healthy) - len(ms),
        "healthy_p50_ms": percentile(ms, 0.50) if ms else float("nan"),
        "healthy_p99_ms": percentile(ms, 0.99) if ms else float("nan"),
        "healthy_max_ms": ms[-1] if ms else float("nan"),
        "requests": len(records),
        "peak_concurrency_any_endpoint": stats[peak_path].peak,
        "peak_concurrency_endpoint": peak_path,
        "peak_concurrency_top5": [by_index[i].peak if i in by_index else 0 for i in range(5)],
        "peak_concurrency_hanging_max": max(hanging, default=0),
        "worker_peak_rss_mib": rss,
        "deliverer_cpu_ms_per_event": deliverers_cpu * 1000 / max(events, 1),
        "postgres_cpu_ms_per_event": machine.cpu_delta(pg_before, pg_cpu) * 1000 / max(events, 1),
        "producer_processes": produced.processes,
        "worst_schedule_lag_ms": produced.worst_lag * 1000,
    }


async def mix(bench: Bench, *, rate: float, seconds: float, endpoints: int = MIX_ENDPOINTS) -> dict[str, Any]:
    """Healthy deliveries with 5% of 1,000 endpoints hanging and 5% failing, against all healthy."""
    healthy = await _mix_run(bench, mixed=False, rate=rate, seconds=seconds, endpoints=endpoints)
    mixed = await _mix_run(bench, mixed=True, rate=rate, seconds=seconds, endpoints=endpoints)
    zipf = Zipf(endpoints, MIX_ZIPF_S)
    return {
        "endpoints": endpoints, "zipf_s": MIX_ZIPF_S, "rate": rate, "seconds": seconds,
        "processes": MIX_PROCESSES, "latency": {"median_ms": MIX_MEDIAN_MS, "sigma": MIX_SIGMA},
        "traffic_share": {"top5": sum(zipf.shares[:5]), "busiest": zipf.shares[0],
                          "hanging": sum(s for i, s in enumerate(zipf.shares) if i % MIX_EVERY == MIX_HANGS),
                          "failing": sum(s for i, s in enumerate(zipf.shares) if i % MIX_EVERY == MIX_FAILS)},
        "all_healthy": healthy, "mixed": mixed,
        # Per healthy event/s offered: the producers may not reach the same rate in both runs.
        "rate_ratio": (mixed["healthy_deliveries_per_s"] / mixed["healthy_offered_per_s"])
        / (healthy["healthy_deliveries_per_s"] / healthy["healthy_offered_per_s"]),
        "p99_ratio": mixed["healthy_p99_ms"] / healthy["healthy_p99_ms"],
    }


# 11. Idle wake-ups -----------------------------------------------------------------


async def wakeups(bench: Bench, *, rate: float, seconds: float, process_counts: Sequence[int]) -> dict[str, Any]:
    """A producer at ``rate`` (one event per transaction) with each process count: empty claims per event."""
    runs: dict[str, dict[str, Any]] = {}
    for count in process_counts:
        with bench.server.database(f"wakeups{count}") as dsn:
            database.add_endpoints(dsn, bench.hooks(ORGS))
            async with Deliverers(dsn, count) as deliverers, await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True) as conn:
                await bench.sink.reset()
                claims_before, empty_before, _ = await deliverers.claims()
                transactions_before = await _transactions(conn)
                deliverers_before, pg_before = deliverers.cpu(), machine.postgres_cpu()
                produced = await scenarios.produce(dsn, rate, seconds)
                await bench.sink.wait_for(len(produced.committed), 30)
                await _settle()
                deliverers_cpu, pg_after = deliverers.cpu() - deliverers_before, machine.postgres_cpu()
                claims_after, empty_after, _ = await deliverers.claims()
                transactions = await _transactions(conn) - transactions_before
            records = await bench.sink.dump()
        received: dict[str, float] = {}
        for _path, event_id, at in records:
            received.setdefault(event_id, at)
        ms = [(received[e] - t) * 1000 for e, t in produced.committed.items() if e in received]
        delivered = max(len(ms), 1)
        runs[str(count)] = {
            "processes": count,
            "events": len(produced.committed),
            "achieved_per_s": len(produced.committed) / seconds,
            "claims_per_event": (claims_after - claims_before) / delivered,
            "empty_claims_per_event": (empty_after - empty_before) / delivered,
            "transactions_per_event": transactions / delivered,
            "p50_ms": percentile(ms, 0.50),
            "p99_ms": percentile(ms, 0.99),
            "max_ms": max(ms),
            "lost": len(produced.committed) - len(ms),
            "deliverer_cpu_ms_per_event": deliverers_cpu * 1000 / delivered,
            "postgres_cpu_ms_per_event": machine.cpu_delta(pg_before, pg_after) * 1000 / delivered,
        }
    first, last = (runs[str(c)] for c in (process_counts[0], process_counts[-1]))
    return {"rate": rate, "seconds": seconds, "by_processes": runs,
            "empty_claims_ratio": last["empty_claims_per_event"] / first["empty_claims_per_event"]
            if first["empty_claims_per_event"] else None,
            "p99_ratio": last["p99_ms"] / first["p99_ms"]}


async def _transactions(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute(database.QUERIES["transactions"])
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _settle() -> None:
    """Let the last outcomes be recorded (RECORD_LINGER) and the claims they wake return."""
    await asyncio.sleep(0.5)


# 12. Endpoint limits across processes ----------------------------------------------

LIMITS_PROCESSES = 4
LIMITED_MAX_IN_FLIGHT = 4
LIMITED_RATE = 50.0


async def limits(bench: Bench, *, slow_events: int, rated_events: int) -> dict[str, Any]:
    """An endpoint answering in 300 ms with max_in_flight 4, and a fast one with rate_limit 50/s, drained
    together by 4 processes: the sink's peak concurrency at the first, its busiest 10 s at the second."""
    with bench.server.database("limits") as dsn:
        slow_id, rated_id = database.add_endpoints(dsn, [bench.sink.url("/slow/0.3/limited"),
                                                         bench.sink.url("/hook/rated")])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(database.QUERIES["set_endpoint_limits"],
                         {"id": slow_id, "max_in_flight": LIMITED_MAX_IN_FLIGHT, "rate_limit": None})
            conn.execute(database.QUERIES["set_endpoint_limits"],
                         {"id": rated_id, "max_in_flight": None, "rate_limit": LIMITED_RATE})
        async with Deliverers(dsn, LIMITS_PROCESSES):
            await bench.sink.reset()
            database.publish(dsn, slow_events, 1)  # all to org 0: the slow endpoint
            with psycopg.connect(dsn) as conn:  # and to org 1: the rate-limited one
                outbox.publish_many(conn, [database.event_for(i, 1) for i in range(rated_events)])
                conn.commit()
            await bench.sink.wait_for(slow_events + rated_events, 120 + rated_events / LIMITED_RATE)
            records, stats = await bench.sink.dump(), await bench.sink.stats()
    rated = sorted(at for path, _, at in records if path.startswith("/hook/rated"))
    slow_stats = stats["/slow/0.3/limited"]
    keys = {(path, event_id) for path, event_id, _ in records}
    return {
        "processes": LIMITS_PROCESSES,
        "max_in_flight": LIMITED_MAX_IN_FLIGHT, "peak_concurrency": slow_stats.peak,
        "rate_limit": LIMITED_RATE, "rated_deliveries": len(rated),
        "rated_most_in_10s": sink_module.most_in_window(rated, 10.0),
        "rated_rate_per_s": (len(rated) - 1) / (rated[-1] - rated[0]) if len(rated) > 1 else 0.0,
        "duplicates": len(records) - len(keys),
        "lost": slow_events + rated_events - len(keys),
    }
