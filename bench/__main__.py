"""How fast the deliverer drains, how soon an event arrives, and what publishing costs, on this machine.

Everything starts here: a PostgreSQL (BENCH_DATABASE_URL or DATABASE_URL, else
an embedded one), a fresh database per scenario created and dropped on it, a
minimal HTTP sink on loopback in its own process (see bench.sink), and real
``python -m deliverer run`` processes. The sink, the database and the
deliverers share the machine, so every figure is for all of them together.

Figures are medians of --repeat runs; ratios are taken within one run and
their median reported. --quick is a smoke run (small numbers, one repeat) that
only shows the harness works. The benchmark exits non-zero if anything was
lost or delivered twice. Results: a table on stdout and bench/results/latest.json.
"""

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import database, machine, report, scale, scenarios
from bench.sink import SinkProcess, capacity
from deliverer.dev import database as devdb
from deliverer.security import sealing

SCENARIOS = ("drain", "latency", "publish", "backlog", "slow", "fanout", "hot", "peers", "floor", "mix", "wakeups",
             "limits", "tracing", "clients", "ordering")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small numbers, one repeat")
    parser.add_argument("--repeat", type=int, help="runs per figure, the median is reported (default 3)")
    parser.add_argument("--events", type=int, help="queued events per drain (default 30,000)")
    parser.add_argument("--processes", help="deliverer process counts for the drain (default 1,2,4)")
    parser.add_argument("--scenario-processes", type=int, default=2,
                        help="deliverer processes in the other scenarios (default 2)")
    parser.add_argument("--latency-seconds", type=float, help="seconds per producer rate (default 20)")
    parser.add_argument("--rates", help="producer rates, events/s (default 200,1000)")
    parser.add_argument("--backlog", type=int, help="not-due deliveries for the backlog scenario (default 1,000,000)")
    parser.add_argument("--mix-rate", type=float, help="producer events/s in the mix scenario (default 200)")
    parser.add_argument("--mix-seconds", type=float, help="seconds of producing in the mix scenario (default 30)")
    parser.add_argument("--wakeup-seconds", type=float, help="seconds of producing in the wakeups scenario "
                        "(default 20)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--output", help="JSON file (default bench/results/latest.json)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"repeat": 1 if quick else 3, "events": 1000 if quick else 30_000,
                "processes": "1,2" if quick else "1,2,4", "latency_seconds": 2.0 if quick else 20.0,
                "rates": "200" if quick else "200,1000", "backlog": 20_000 if quick else 1_000_000,
                "mix_rate": 100 if quick else 200, "mix_seconds": 2.0 if quick else 30.0,
                "wakeup_seconds": 1.5 if quick else 20.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.processes = [int(p) for p in str(args.processes).split(",")]
    args.rates = [float(r) for r in str(args.rates).split(",")]
    args.only = SCENARIOS if not args.only else tuple(args.only.split(","))
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


async def run(args: argparse.Namespace, server: database.Server) -> dict[str, Any]:
    with server.admin() as conn:
        machine.use_server(conn.info.backend_pid)  # not another PostgreSQL on this machine
    sink = SinkProcess()
    await sink.start()
    bench = scenarios.Bench(server, sink)
    quick, repeat, p = args.quick, args.repeat, args.scenario_processes
    drains = scale.Drains(bench, events=args.events, repeat=repeat)
    results: dict[str, Any] = {"machine": machine.describe(server.version()), "repeat": repeat, "quick": quick,
                               "timings_s": {}}
    steps: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
        ("sink", "sink", lambda: capacity(sink, database.body().encode(), seconds=1 if quick else 2)),
        ("drain", "drain", lambda: scenarios.drain(bench, events=args.events, processes=args.processes,
                                                   repeat=repeat)),
        ("latency", "latency", lambda: scenarios.latency(bench, rates=args.rates, seconds=args.latency_seconds,
                                                         processes=p, repeat=repeat)),
        ("publish", "publish", lambda: asyncio.to_thread(
            scenarios.publish_cost, bench, ops=200 if quick else 1000, batch=500 if quick else 1000,
            batches=3 if quick else 10, repeat=repeat)),
        ("backlog", "backlog", lambda: scenarios.backlog(bench, backlog_size=args.backlog,
                                                         events=300 if quick else 5000, processes=p,
                                                         repeat=repeat)),
        ("slow", "slow_receivers", lambda: scenarios.slow_receivers(bench, events=400 if quick else 10_000,
                                                                    processes=p, repeat=repeat)),
        ("fanout", "fan_out", lambda: scenarios.fan_out(bench, endpoints=100, events=1 if quick else 3 * repeat,
                                                        processes=p)),
        ("hot", "hot", lambda: scale.hot(drains)),
        ("peers", "peers", lambda: scale.peers(drains)),
        ("floor", "floor", lambda: scale.floor(drains)),
        ("mix", "mix", lambda: scale.mix(bench, rate=args.mix_rate, seconds=args.mix_seconds,
                                         endpoints=100 if quick else scale.MIX_ENDPOINTS)),
        ("wakeups", "wakeups", lambda: scale.wakeups(bench, rate=200, seconds=args.wakeup_seconds,
                                                     process_counts=(2, 4) if quick else (2, 8))),
        ("limits", "limits", lambda: scale.limits(bench, slow_events=40 if quick else 200,
                                                  rated_events=100 if quick else 1000)),
        ("tracing", "tracing", lambda: scenarios.tracing_cost(bench, events=1000 if quick else 10_000,
                                                              processes=p, repeat=repeat)),
        ("clients", "http_clients", lambda: scenarios.http_clients(bench, events=1000 if quick else 10_000,
                                                                   processes=p, repeat=repeat)),
        ("ordering", "ordering", lambda: scenarios.ordering_cost(bench, events=1000 if quick else 10_000,
                                                                 one_key_events=200 if quick else 1000,
                                                                 processes=p, repeat=repeat)),
    ]
    try:
        for name, key, step in steps:
            if name != "sink" and name not in args.only:
                continue
            started = time.monotonic()
            results[key] = await step()
            results["timings_s"][key] = round(time.monotonic() - started, 1)
            print(f"[{key} done in {results['timings_s'][key]:.0f} s]", flush=True)
    finally:
        drains.close()
        await sink.stop()
    return results


def problems(results: dict[str, Any]) -> list[str]:
    """Anything lost or duplicated, anywhere."""
    found = []
    for processes, run_list in results.get("drain", {}).get("runs", {}).items():
        for r in run_list:
            if r["duplicates"] or r["lost"]:
                found.append(f"drain with {processes} processes: {r['duplicates']} duplicates, {r['lost']} lost")
    for rate, run_list in results.get("latency", {}).get("runs", {}).items():
        found += [f"latency at {rate}/s: {r['lost']} lost" for r in run_list if r["lost"]]
    for key in ("backlog", "slow_receivers"):
        for label, run_list in results.get(key, {}).get("runs", {}).items():
            found += [f"{key} ({label}): {r['duplicates']} duplicates, {r['lost']} lost"
                      for r in run_list if r["duplicates"] or r["lost"]]
    for key in ("hot", "peers", "floor"):
        for system, run_list in results.get(key, {}).get("runs", {}).items():
            found += [f"{key} ({system}): {r['duplicates']} duplicates, {r['lost']} lost"
                      for r in run_list if r["duplicates"] or r["lost"]]
    for key in ("tracing", "http_clients"):
        for label, run_list in results.get(key, {}).get("runs", {}).items():
            found += [f"{key} ({label}): {r['duplicates']} duplicates, {r['lost']} lost"
                      for r in run_list if r["duplicates"] or r["lost"]]
    for count, r in results.get("wakeups", {}).get("by_processes", {}).items():
        if r["lost"]:
            found.append(f"wakeups with {count} processes: {r['lost']} lost")
    lim = results.get("limits")
    if lim and (lim["duplicates"] or lim["lost"] or lim["peak_concurrency"] > lim["max_in_flight"]
                or lim["rated_most_in_10s"] > 1.1 * lim["rate_limit"] * 10):
        found.append(f"limits: peak {lim['peak_concurrency']} of max_in_flight {lim['max_in_flight']}, "
                     f"{lim['rated_most_in_10s']} in 10 s at rate_limit {lim['rate_limit']:g}, "
                     f"{lim['duplicates']} duplicates, {lim['lost']} lost")
    if results.get("fan_out", {}).get("lost_events"):
        found.append(f"fan-out: {results['fan_out']['lost_events']} events missed an endpoint")
    return found


def main(argv: list[str] | None = None) -> int:
    sealing.use_development_key()
    args = parse_args(argv)
    started = time.monotonic()
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    with devdb.database(url, use_docker=False) as server_url:
        results = asyncio.run(run(args, database.Server(server_url)))
    results["total_seconds"] = round(time.monotonic() - started, 1)
    print(report.table(results))
    path = report.write(results, None if args.output is None else report.Path(args.output))
    print(f"\ntotal {results['total_seconds']:.0f} s; written to {path}")
    found = problems(results)
    for problem in found:
        print(f"PROBLEM: {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
