"""The six measurements. Each takes fresh databases on the server and returns plain dicts.

- :func:`drain`: N queued events drained by 1, 2, 4… deliverer processes.
- :func:`latency`: producers committing one event per transaction at a steady rate.
- :func:`publish_cost`: ``outbox.publish`` against a bare INSERT of the same row.
- :func:`backlog`: a drain with a million not-yet-due deliveries in the queue.
- :func:`slow_receivers`: half the endpoints hang until the deliverer's timeout.
- :func:`fan_out`: one event to 100 endpoints.

Every drain runs the same way (:func:`measure_drain`): the deliverers start on
an empty queue and wait, the staged deliveries are released in one
transaction, and the rate is taken between the first and the last receipt at
the sink. CPU is read from /proc at the release and once every outcome is
recorded, so process start-up and shutdown are not counted.
"""

import asyncio
import contextlib
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from opentelemetry import context, trace

import outbox
from bench import database, machine
from bench.database import ORGS, QUERIES, Server, fetch_one
from bench.deliverers import Deliverers
from bench.sink import SinkProcess
from deliverer.delivery.worker import Worker
from deliverer.settings import Settings
from outbox import ids
from outbox.publish import serialize

SAMPLE_INTERVAL = 0.05  # seconds between samples of the deliverers' backends in pg_stat_activity


@dataclass
class Bench:
    server: Server
    sink: SinkProcess

    def hooks(self, count: int, *, slow_from: int | None = None, hang: float = 30.0) -> list[str]:
        """``count`` endpoint URLs on the sink; from index ``slow_from`` on they hang for ``hang`` seconds."""
        return [self.sink.url(f"/slow/{hang:g}/{i}" if slow_from is not None and i >= slow_from else f"/hook/{i}")
                for i in range(count)]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (any order)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric field over runs (other fields from the first run)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(run[key] for run in runs)
        else:
            out[key] = value
    return out


class _WaitSampler:
    """Samples what the deliverers' active backends wait on, from a separate connection."""

    def __init__(self, server: Server, dbname: str) -> None:
        self.server, self.dbname = server, dbname
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self.backend_pid = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "_WaitSampler":
        conn = await psycopg.AsyncConnection.connect(self.server.url, autocommit=True)
        self.backend_pid = conn.info.backend_pid
        self._task = asyncio.create_task(self._run(conn))
        return self

    async def _run(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn:
            while True:
                cur = await conn.execute(QUERIES["deliverer_waits"], {"dbname": self.dbname})
                for kind, count in await cur.fetchall():
                    self.counts[kind] += count
                self.samples += 1
                await asyncio.sleep(SAMPLE_INTERVAL)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {kind: count / total for kind, count in sorted(self.counts.items())} if total else {}


async def measure_drain(bench: Bench, dsn: str, processes: int, expected: int, *,
                        counted: str = "/", timeout: float = 300, settings: dict[str, str] | None = None,
                        only_counted: bool = False) -> dict[str, Any]:
    """Start ``processes`` deliverers, release the staged deliveries, and measure until all are recorded.

    ``expected`` requests to paths starting with ``counted`` must reach the sink
    (the rate is over them, first to last; other requests, such as exported
    spans, are not deliveries). With ``only_counted``, the measure ends when they
    have all arrived: the rest (hanging receivers) is left to the deliverers' shutdown.
    """
    dbname = database.dbname(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        after_seq = fetch_one(conn, "last_log_seq")
        transactions_before = fetch_one(conn, "transactions")
    async with Deliverers(dsn, processes, **(settings or {})) as deliverers:
        with psycopg.connect(dsn, autocommit=True) as conn:
            backends = deliverers.backends(conn)
            own_pid = conn.info.backend_pid
            await bench.sink.reset()
            async with _WaitSampler(bench.server, dbname) as sampler:
                own_before = machine.process_cpu(own_pid) + machine.process_cpu(sampler.backend_pid)
                claims_before = await deliverers.claims()
                pg_before = machine.postgres_cpu()
                deliverers_before, sink_before = deliverers.cpu(), machine.process_cpu(bench.sink.pid)
                released = time.monotonic()
                database.release(conn)
                received = await bench.sink.wait_for(expected, timeout, prefix=counted)
                if received < expected:
                    raise RuntimeError(f"only {received} of {expected} requests reached the sink in {timeout} s; "
                                       f"deliverer log:\n{deliverers.tail()}")
                deadline = time.monotonic() + (0 if only_counted else 60)
                while fetch_one(conn, "staged_unrecorded") and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the outcomes are in another process's hands: poll
                recorded = time.monotonic()
                pg_after = machine.postgres_cpu()
                claims_after = await deliverers.claims()
                # Their connections then, and any opened since the start (the outcomes' one opens
                # at the first outcome, after the release): counted from 0 if new.
                backends = sorted(set(backends) | set(deliverers.backends(conn)))
                roles = {pid: _role(query) for pid, query in conn.execute(
                    QUERIES["deliverer_connections"], {"dbname": dbname})}
                deliverers_cpu = deliverers.cpu() - deliverers_before
                by_kind = machine.cpu_delta_by_kind(pg_before, pg_after)
                sink_cpu = machine.process_cpu(bench.sink.pid) - sink_before
                own_cpu = machine.process_cpu(own_pid) + machine.process_cpu(sampler.backend_pid) - own_before
            records = await bench.sink.dump()
    records = [r for r in records if r[0].startswith(counted)]  # not, say, spans exported to the sink
    await asyncio.sleep(0.2)  # exiting backends flush their statistics
    with psycopg.connect(dsn, autocommit=True) as conn:
        attempts, succeeded, taken_over = conn.execute(
            QUERIES["claim_counts"], {"after_seq": after_seq}).fetchone() or (0, 0, 0)
        # Every transaction in the database from before the start to after the stop: the
        # deliverers' statements (claims, empty or not, records, sleeps' due-time queries,
        # backlog gauges) and the few dozen of this harness.
        transactions = fetch_one(conn, "transactions") - transactions_before
    claims_with_rows = (claims_after[0] - claims_before[0]) - (claims_after[1] - claims_before[1])
    keys = Counter((path, event_id) for path, event_id, _ in records)
    times = sorted(t for path, _, t in records if path.startswith(counted))
    per_1000 = 1e6 / expected  # CPU seconds -> ms per 1,000 deliveries
    shares = sampler.shares()
    return {
        "processes": processes,
        "deliveries": expected,
        "deliveries_per_s": (len(times) - 1) / (times[-1] - times[0]),
        "first_receipt_after_release_ms": (times[0] - released) * 1000,
        "release_to_recorded_s": recorded - released,
        "deliverer_cpu_ms_per_1000": deliverers_cpu * per_1000,
        "postgres_cpu_ms_per_1000": (machine.cpu_delta(pg_before, pg_after) - own_cpu) * per_1000,
        # Where PostgreSQL's CPU went: backends (less this harness's), WAL writer, autovacuum, I/O workers…
        "postgres_cpu_by_kind_ms_per_1000": {
            kind: (cpu - (own_cpu if kind == "backend" else 0)) * per_1000 for kind, cpu in sorted(by_kind.items())},
        # The deliverers' backends by the role of their connection: where the database work per delivery goes.
        "postgres_cpu_by_connection_ms_per_1000": {
            role: sum(pg_after[p] - pg_before.get(p, 0.0) for p, r in roles.items() if r == role and p in pg_after)
            * per_1000 for role in sorted(set(roles.values()))},
        "postgres_deliverer_backends_cpu_ms_per_1000": sum(
            pg_after[p] - pg_before.get(p, 0.0) for p in backends if p in pg_after) * per_1000,
        "sink_cpu_ms_per_1000": sink_cpu * per_1000,
        "duplicates": sum(n - 1 for n in keys.values()),
        "lost": expected - len(keys),
        "succeeded": succeeded,
        "attempts": attempts,
        "claim_statements_with_rows": claims_with_rows,
        "mean_claim_batch": (claims_after[2] - claims_before[2]) / claims_with_rows if claims_with_rows else 0.0,
        "transactions_per_1000": transactions * 1000 / expected,
        "claims_per_1000": (claims_after[0] - claims_before[0]) * 1000 / expected,
        "empty_claims_per_1000": (claims_after[1] - claims_before[1]) * 1000 / expected,
        "taken_over": taken_over,
        "lock_wait_share": shares.get("Lock", 0.0),
        "lwlock_wait_share": shares.get("LWLock", 0.0),
        "io_wait_share": shares.get("IO", 0.0),
        "backend_wait_shares": shares,
        "backend_samples": sampler.samples,
    }


def _role(statement: str) -> str:
    """What a deliverer connection is for, from the last statement it ran."""
    if statement.startswith("LISTEN"):
        return "listen"
    # pg_stat_activity keeps only the first track_activity_query_size (1 kB) of a statement:
    # the claim is told by its opening CTE, before its count(*) makes it look like a gauge.
    if "oldest AS MATERIALIZED" in statement:
        return "claims"
    if "jsonb_to_recordset" in statement or "failing_since" in statement or "outbox_event" in statement:
        return "outcomes"
    if "LIMIT" in statement and "count(*)" in statement:
        return "backlog gauges"
    return "other"


# 1. Drain ---------------------------------------------------------------------


async def drain(bench: Bench, *, events: int, processes: Sequence[int], repeat: int) -> dict[str, Any]:
    """N queued events (one endpoint each, over ORGS endpoints), drained by each process count in turn."""
    with bench.server.database("drain_template") as template:
        database.add_endpoints(template, bench.hooks(ORGS))
        database.stage(template, events, ORGS)
        runs: dict[int, list[dict[str, Any]]] = {p: [] for p in processes}
        for _ in range(repeat):
            for count in processes:
                with bench.server.database(f"drain{count}", template=template) as dsn:
                    runs[count].append(await measure_drain(bench, dsn, count, events))
    result: dict[str, Any] = {"events": events, "endpoints": ORGS, "repeat": repeat,
                              "by_processes": {str(p): medians(r) for p, r in runs.items()},
                              "runs": {str(p): r for p, r in runs.items()}}
    if 2 in runs and 4 in runs:
        ratios = [four["deliveries_per_s"] / two["deliveries_per_s"]
                  for two, four in zip(runs[2], runs[4], strict=True)]
        result["rate_4_vs_2"] = statistics.median(ratios)
    return result


# 2. Latency --------------------------------------------------------------------


@dataclass
class Produced:
    committed: dict[str, float]  # event id -> monotonic time its COMMIT returned
    orgs: dict[str, int]  # event id -> index of its org (and endpoint)
    worst_lag: float
    processes: int


async def produce(dsn: str, rate: float, seconds: float, zipf: tuple[int, float] | None = None) -> Produced:
    """Commit one event per transaction at ``rate`` for ``seconds``.

    The schedule is shared by ceil(rate / 150) producer processes (see bench.producer); ``zipf``
    (orgs, s) spreads the events over that many orgs by a Zipf distribution instead of round-robin.
    """
    count = max(1, math.ceil(rate / 150))
    start = time.monotonic() + 1.0 + 0.3 * count  # after every process has imported and connected
    processes = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.producer", dsn, str(rate), str(seconds), repr(start), str(index), str(count),
        *([] if zipf is None else [str(zipf[0]), str(zipf[1])]),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE) for index in range(count)]
    produced = Produced({}, {}, 0.0, count)
    for process in processes:
        out, _ = await process.communicate()
        if process.returncode:
            raise RuntimeError(f"a producer failed with exit status {process.returncode}")
        result = json.loads(out)
        produced.committed.update(result["committed"])
        produced.orgs.update(result["orgs"])
        produced.worst_lag = max(produced.worst_lag, result["worst_lag"])
    return produced


async def latency(bench: Bench, *, rates: Sequence[float], seconds: float, processes: int,
                  repeat: int) -> dict[str, Any]:
    """Commit-to-receipt latency with producers at each steady rate, the deliverers idle in between."""
    runs: dict[str, list[dict[str, Any]]] = {f"{rate:g}": [] for rate in rates}
    with bench.server.database("latency") as dsn:
        database.add_endpoints(dsn, bench.hooks(ORGS))
        async with Deliverers(dsn, processes) as deliverers:
            for _ in range(repeat):
                for rate in rates:
                    await bench.sink.reset()
                    deliverers_before, pg_before = deliverers.cpu(), machine.postgres_cpu()
                    produced = await produce(dsn, rate, seconds)
                    committed, lag, connections = produced.committed, produced.worst_lag, produced.processes
                    await bench.sink.wait_for(len(committed), 30)
                    deliverers_cpu, pg_after = deliverers.cpu() - deliverers_before, machine.postgres_cpu()
                    received: dict[str, float] = {}
                    for _path, event_id, at in await bench.sink.dump():
                        received.setdefault(event_id, at)
                    ms = [(received[e] - t) * 1000 for e, t in committed.items() if e in received]
                    commits = sorted(committed.values())
                    runs[f"{rate:g}"].append({
                        "target_per_s": rate,
                        "achieved_per_s": len(commits) / seconds,
                        "producer_processes": connections,
                        "worst_schedule_lag_ms": lag * 1000,
                        "events": len(committed),
                        "p50_ms": percentile(ms, 0.50),
                        "p95_ms": percentile(ms, 0.95),
                        "p99_ms": percentile(ms, 0.99),
                        "max_ms": max(ms),
                        "lost": len(committed) - len(ms),
                        # Per event, with one wake-up and claim per producer commit (the producers'
                        # own backends are in the PostgreSQL figure).
                        "deliverer_cpu_ms_per_event": deliverers_cpu * 1000 / max(len(committed), 1),
                        "postgres_cpu_ms_per_event": machine.cpu_delta(pg_before, pg_after) * 1000
                        / max(len(committed), 1),
                    })
    return {"seconds": seconds, "processes": processes, "repeat": repeat,
            "by_rate": {rate: medians(r) for rate, r in runs.items()}, "runs": runs}


# 3. Publish cost -----------------------------------------------------------------


def _bare_params(event: outbox.Event) -> dict[str, Any]:
    return {"id": ids.new_event_uuid(), "org_id": event.org_id, "event_type": event.event_type,
            "body": serialize(event.event_type, event.data)}


def _time_single(conn: psycopg.Connection[Any], ops: int, write: Callable[[], None]) -> tuple[float, float]:
    """Mean µs of ``write`` alone and of its whole transaction (with COMMIT), one per transaction."""
    in_statement = 0.0
    started = time.perf_counter()
    for _ in range(ops):
        t = time.perf_counter()
        write()
        in_statement += time.perf_counter() - t
        conn.commit()
    return in_statement * 1e6 / ops, (time.perf_counter() - started) * 1e6 / ops


def _time_block(conn: psycopg.Connection[Any], ops: int, write: Callable[[], None]) -> float:
    """Mean µs per ``write`` when ``ops`` of them share one transaction (its COMMIT included)."""
    started = time.perf_counter()
    for _ in range(ops):
        write()
    conn.commit()
    return (time.perf_counter() - started) * 1e6 / ops


def publish_cost(bench: Bench, *, ops: int, batch: int, batches: int, repeat: int) -> dict[str, Any]:
    """µs per publish against a bare INSERT of the same outbox_event row, one subscribed endpoint."""
    event = database.job_completed(0, 1)
    runs = []
    with bench.server.database("publish") as dsn, psycopg.connect(dsn) as conn:
        database.add_endpoints(dsn, bench.hooks(1))

        def publish() -> None:
            outbox.publish(conn, event.event_type, event.data, org_id=event.org_id)

        def bare() -> None:
            conn.execute(QUERIES["bare_insert"], _bare_params(event))

        def publish_many() -> None:
            outbox.publish_many(conn, [event] * batch)

        def bare_many() -> None:
            rows = [_bare_params(event) for _ in range(batch)]
            conn.execute(QUERIES["bare_insert_many"], {
                "ids": [r["id"] for r in rows], "org_ids": [r["org_id"] for r in rows],
                "event_types": [r["event_type"] for r in rows], "bodies": [r["body"] for r in rows]})

        _time_single(conn, 50, publish)  # warm up: psycopg prepares statements after a few runs
        _time_single(conn, 50, bare)
        for _ in range(repeat):
            publish_us, publish_txn_us = _time_single(conn, ops, publish)
            bare_us, bare_txn_us = _time_single(conn, ops, bare)
            publish_block_us = _time_block(conn, ops, publish)
            bare_block_us = _time_block(conn, ops, bare)
            many_s = _time_single(conn, batches, publish_many)[1] / 1e6
            bare_many_s = _time_single(conn, batches, bare_many)[1] / 1e6
            runs.append({
                "publish_us": publish_us, "bare_insert_us": bare_us, "ratio": publish_us / bare_us,
                "publish_txn_us": publish_txn_us, "bare_insert_txn_us": bare_txn_us,
                "txn_ratio": publish_txn_us / bare_txn_us,
                "publish_in_shared_txn_us": publish_block_us, "bare_insert_in_shared_txn_us": bare_block_us,
                "shared_txn_ratio": publish_block_us / bare_block_us,
                "publish_many_events_per_s": batch / many_s, "bare_insert_many_events_per_s": batch / bare_many_s,
                "publish_many_ratio": many_s / bare_many_s,
            })
    return {"ops": ops, "batch": batch, "batches": batches, "repeat": repeat, "median": medians(runs),
            "runs": runs}


# 4. Backlog ------------------------------------------------------------------------


def explain_claim(conn: psycopg.Connection[Any], *, analyze: bool = False) -> str:
    """EXPLAIN of the claim statement with the parameters Worker.claim sends.

    With ``analyze`` the claim really runs, so call it inside a transaction that is rolled back.
    """
    worker = Worker(Settings(worker_id="bench-explain"))
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
    rows = conn.execute(prefix + worker.claim_statement(100), worker.claim_params(100)).fetchall()
    return "\n".join(row[0] for row in rows)


async def backlog(bench: Bench, *, backlog_size: int, events: int, processes: int, repeat: int) -> dict[str, Any]:
    """Drain rate with ``backlog_size`` not-due deliveries queued, against the same drain on an empty queue."""
    runs: dict[str, list[dict[str, Any]]] = {"empty": [], "backlog": []}
    with bench.server.database("empty") as empty, bench.server.database("backlog") as full:
        database.add_endpoints(empty, bench.hooks(ORGS))
        endpoint_ids = database.add_endpoints(full, bench.hooks(ORGS))
        started = time.monotonic()
        with psycopg.connect(full, autocommit=True) as conn:
            params = {"count": backlog_size, "orgs": ORGS, "body": database.body(), "endpoint_ids": endpoint_ids}
            conn.execute(QUERIES["bulk_events"], params)
            conn.execute(QUERIES["bulk_deliveries"], params)
            conn.execute(QUERIES["vacuum_queue"])
        load_s = time.monotonic() - started
        plan = ""
        for index in range(repeat):
            for label, dsn in (("empty", empty), ("backlog", full)):
                database.stage(dsn, events, ORGS)
                if index == 0 and label == "backlog":
                    with psycopg.connect(dsn) as conn:
                        conn.execute(QUERIES["release_staged"])
                        plan = explain_claim(conn, analyze=True)
                        conn.rollback()
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute(QUERIES["vacuum_queue"])
                runs[label].append(await measure_drain(bench, dsn, processes, events))
    ratios = [b["deliveries_per_s"] / e["deliveries_per_s"]
              for e, b in zip(runs["empty"], runs["backlog"], strict=True)]
    return {"backlog": backlog_size, "due_events": events, "processes": processes, "repeat": repeat,
            "load_seconds": load_s, "empty": medians(runs["empty"]), "with_backlog": medians(runs["backlog"]),
            "ratio": statistics.median(ratios), "claim_plan": plan, "runs": runs}


# 13. Tracing ------------------------------------------------------------------------

TRACE_PARENT = trace.SpanContext(trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331,
                                 is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
"""The producer's span every traced event is published in."""


async def tracing_cost(bench: Bench, *, events: int, processes: int, repeat: int) -> dict[str, Any]:
    """The same drain of events published inside a trace, with export off and with every attempt's span
    exported over OTLP (http/protobuf) to the sink, which answers 200 as a collector would."""
    exporting = {"OTEL_TRACES_EXPORTER": "otlp",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": bench.sink.url("/otlp/v1/traces")}
    with bench.server.database("tracing_template") as template:
        database.add_endpoints(template, bench.hooks(ORGS))
        token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(TRACE_PARENT)))
        try:
            database.stage(template, events, ORGS)  # each event stores the producer's traceparent
        finally:
            context.detach(token)
        runs = await _variants(bench, template, processes, events, repeat, {"off": {}, "on": exporting},
                               after={"on": lambda run: _count_spans(bench, run)})
    return {"events": events, "endpoints": ORGS, "processes": processes, "repeat": repeat,
            "export_off": medians(runs["off"]), "export_on": medians(runs["on"]),
            "ratio": _median_ratio(runs["on"], runs["off"]), "runs": runs}


async def _count_spans(bench: Bench, run: dict[str, Any]) -> None:
    run["spans_posts"] = await bench.sink.count("/otlp/")


async def _variants(bench: Bench, template: str, processes: int, events: int, repeat: int,
                    variants: dict[str, dict[str, str]],
                    after: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] | None = None,
                    ) -> dict[str, list[dict[str, Any]]]:
    """The same drain (a copy of ``template`` each time) with each variant's settings, interleaved repeat by
    repeat so that a ratio pairs runs close in time."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
    for _ in range(repeat):
        for label, settings in variants.items():
            with bench.server.database(f"variant_{label}", template=template) as dsn:
                run = await measure_drain(bench, dsn, processes, events, counted="/hook/", settings=settings)
                if after and label in after:
                    await after[label](run)
                runs[label].append(run)
    return runs


def _median_ratio(these: list[dict[str, Any]], those: list[dict[str, Any]]) -> float:
    return statistics.median(a["deliveries_per_s"] / b["deliveries_per_s"] for a, b in zip(these, those, strict=True))


# 14. HTTP clients -----------------------------------------------------------------


async def http_clients(bench: Bench, *, events: int, processes: int, repeat: int) -> dict[str, Any]:
    """The same drain sent by the default client and by DELIVERER_HTTP_CLIENT=aiohttp."""
    with bench.server.database("clients_template") as template:
        database.add_endpoints(template, bench.hooks(ORGS))
        database.stage(template, events, ORGS)
        runs = await _variants(bench, template, processes, events, repeat,
                               {"default": {}, "aiohttp": {"DELIVERER_HTTP_CLIENT": "aiohttp"}})
    return {"events": events, "endpoints": ORGS, "processes": processes, "repeat": repeat,
            "default": medians(runs["default"]), "aiohttp": medians(runs["aiohttp"]),
            "ratio": _median_ratio(runs["aiohttp"], runs["default"]), "runs": runs}


# 15. Ordered delivery --------------------------------------------------------------


ORDERINGS = {"unordered": ("none", None), "fifo_50_keys": ("fifo", 50), "fifo_1_key": ("fifo", 1)}
"""One endpoint with all the traffic: as it comes, in order per 50 ordering keys, in order as one sequence."""


async def ordering_cost(bench: Bench, *, events: int, one_key_events: int, processes: int,
                        repeat: int) -> dict[str, Any]:
    """Deliveries/s to one endpoint unordered and with ordering "fifo": a key has one request open at a time,
    and the next goes once the outcome is written, so one key's rate is one round of send and record."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in ORDERINGS}
    counts = {label: one_key_events if keys == 1 else events for label, (_, keys) in ORDERINGS.items()}
    for label, (ordering, keys) in ORDERINGS.items():
        with bench.server.database(f"ordering_{label}") as template:
            database.add_endpoints(template, bench.hooks(1), ordering=ordering)
            database.stage(template, counts[label], 1, keys=keys)
            for _ in range(repeat):
                with bench.server.database(f"ordering_{label}_run", template=template) as dsn:
                    runs[label].append(await measure_drain(bench, dsn, processes, counts[label], counted="/hook/"))
    return {"processes": processes, "repeat": repeat, "events": counts,
            **{label: medians(these) for label, these in runs.items()}, "runs": runs}


# 5. Slow receivers ------------------------------------------------------------------


SLOW_SETTINGS = {"DELIVERER_HTTP_TIMEOUT": "2", "DELIVERER_RETRY_DELAYS": "3600"}
"""A 2 s timeout keeps the run short; retries an hour later keep the hung sends' retries out of the window."""


async def slow_receivers(bench: Bench, *, events: int, processes: int, repeat: int) -> dict[str, Any]:
    """Deliveries/s to healthy endpoints when half the endpoints hang, against all of them healthy."""
    healthy_only = ORGS // 2
    runs: dict[str, list[dict[str, Any]]] = {"all_healthy": [], "half_slow": []}
    for _ in range(repeat):
        for label, slow_from in (("all_healthy", None), ("half_slow", healthy_only)):
            # A fresh database each time: a run leaves the hanging endpoints' deliveries behind.
            with bench.server.database(label) as dsn:
                database.add_endpoints(dsn, bench.hooks(ORGS, slow_from=slow_from))
                # The same healthy work both times: with half hanging, twice the events.
                database.stage(dsn, events if slow_from is None else 2 * events, ORGS)
                runs[label].append(await measure_drain(
                    bench, dsn, processes, events,
                    counted="/hook/", settings=SLOW_SETTINGS,
                    only_counted=label == "half_slow"))
    ratios = [s["deliveries_per_s"] / h["deliveries_per_s"]
              for h, s in zip(runs["all_healthy"], runs["half_slow"], strict=True)]
    return {"events": events, "endpoints": ORGS, "slow_endpoints": ORGS - healthy_only, "processes": processes,
            "settings": SLOW_SETTINGS, "repeat": repeat, "all_healthy": medians(runs["all_healthy"]),
            "half_slow": medians(runs["half_slow"]), "ratio": statistics.median(ratios), "runs": runs}


# 6. Fan-out -------------------------------------------------------------------------


async def fan_out(bench: Bench, *, endpoints: int, events: int, processes: int) -> dict[str, Any]:
    """Commit of one event to the last of its ``endpoints`` receipts, one event at a time."""
    samples = []
    with bench.server.database("fanout") as dsn:
        database.add_endpoints(dsn, [bench.sink.url(f"/fan/{i}") for i in range(endpoints)], org_id="org_fan")
        event = outbox.Event("job.completed", {**database.PAYLOAD, "org_id": "org_fan"}, "org_fan")
        async with Deliverers(dsn, processes):
            with psycopg.connect(dsn) as conn:
                for index in range(events + 1):  # the first one opens the keep-alive connections: not counted
                    await bench.sink.reset()
                    event_id = outbox.publish(conn, event.event_type, event.data, org_id=event.org_id)
                    conn.commit()
                    committed = time.monotonic()
                    await bench.sink.wait_for(endpoints, 30, interval=0.005)
                    times = sorted(at for _, e, at in await bench.sink.dump() if e == event_id)
                    if index and len(times) == endpoints:
                        samples.append({"first_ms": (times[0] - committed) * 1000,
                                        "median_ms": (statistics.median(times) - committed) * 1000,
                                        "last_ms": (times[-1] - committed) * 1000})
                    elif index:
                        samples.append({"first_ms": math.nan, "median_ms": math.nan, "last_ms": math.nan})
                    await asyncio.sleep(0.2)
    lost = sum(math.isnan(s["last_ms"]) for s in samples)
    good = [s for s in samples if not math.isnan(s["last_ms"])]
    return {"endpoints": endpoints, "events": events, "processes": processes, "lost_events": lost,
            "median": medians(good) if good else {}, "samples": samples}


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
