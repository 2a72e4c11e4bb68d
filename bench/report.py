"""The results as a table for people and a JSON file for machines."""

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

Row = tuple[str, str, str]  # measure, value, target


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _drain_rows(drain: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [(f"1. drain: {drain['events']:,} queued events over {drain['endpoints']} endpoints", "", "")]
    for processes, r in drain["by_processes"].items():
        rows += [
            (f"  {processes} process(es): deliveries/s (first to last receipt)", _n(r["deliveries_per_s"]),
             ">= 8,000 (goal 12,000)"),
            ("    deliverer CPU ms per 1,000 deliveries", _n(r["deliverer_cpu_ms_per_1000"]), "110-160 (peers)"),
            ("    PostgreSQL CPU ms per 1,000 (all postgres processes)", _n(r["postgres_cpu_ms_per_1000"]),
             "20-70 (peers)"),
            ("      of which the deliverers' own backends", _n(r["postgres_deliverer_backends_cpu_ms_per_1000"]), ""),
            ("    sink CPU ms per 1,000", _n(r["sink_cpu_ms_per_1000"]), ""),
            ("    claims with rows per 1,000 / mean batch",
             f"{r['claim_statements_with_rows'] * 1000 / r['deliveries']:.1f} / {r['mean_claim_batch']:.1f}", ""),
            ("    DB transactions per 1,000 deliveries", _n(r["transactions_per_1000"]), ""),
            ("    backend samples waiting on Lock / LWLock",
             f"{r['lock_wait_share']:.1%} / {r['lwlock_wait_share']:.1%}", ""),
            ("    duplicates / lost / taken-over leases", f"{r['duplicates']:.0f} / {r['lost']:.0f} / "
             f"{r['taken_over']:.0f}", "0 / 0 / 0"),
        ]
    if "rate_4_vs_2" in drain:
        rows.append(("  4 processes vs 2: rate ratio", f"{drain['rate_4_vs_2']:.2f}", ">= 1.00"))
    return rows


def _latency_rows(latency: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [(f"2. latency: commit to receipt, {latency['seconds']:g} s per rate, "
                        f"{latency['processes']} deliverer processes", "", "")]
    targets = {"200": "p50 <= 2, p99 <= 5", "1000": "p99 <= 10"}
    for rate, r in latency["by_rate"].items():
        rows += [
            (f"  {rate}/s target: achieved rate ({r['producer_processes']:.0f} producer processes)",
             _n(r["achieved_per_s"]), ""),
            ("    p50 / p95 / p99 / max ms", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f} / "
             f"{r['max_ms']:.0f}", targets.get(rate, "")),
            ("    deliverer / PostgreSQL CPU ms per event",
             f"{r['deliverer_cpu_ms_per_event']:.2f} / {r['postgres_cpu_ms_per_event']:.2f}", ""),
            ("    lost", _n(r["lost"]), "0"),
        ]
    return rows


def _publish_rows(publish: dict[str, Any]) -> list[Row]:
    m = publish["median"]
    return [
        (f"3. publish cost, one subscribed endpoint ({publish['ops']:,} ops per measure)", "", ""),
        ("  publish vs bare INSERT, one per transaction: µs (statement only)",
         f"{m['publish_us']:.0f} vs {m['bare_insert_us']:.0f} = {m['ratio']:.2f}x", "<= 1.3x"),
        ("  same, whole transaction with COMMIT: µs",
         f"{m['publish_txn_us']:.0f} vs {m['bare_insert_txn_us']:.0f} = {m['txn_ratio']:.2f}x", ""),
        (f"  {publish['ops']:,} publishes in one transaction: µs per event",
         f"{m['publish_in_shared_txn_us']:.0f} vs {m['bare_insert_in_shared_txn_us']:.0f} = "
         f"{m['shared_txn_ratio']:.2f}x", "<= 1.3x"),
        (f"  publish_many, {publish['batch']:,} per call: events/s",
         f"{_n(m['publish_many_events_per_s'])} vs {_n(m['bare_insert_many_events_per_s'])} = "
         f"{m['publish_many_ratio']:.2f}x time", ">= 20,000/s"),
    ]


def _backlog_rows(backlog: dict[str, Any]) -> list[Row]:
    return [
        (f"4. backlog: {backlog['due_events']:,} due events, {backlog['processes']} processes, "
         f"{backlog['backlog']:,} not due (loaded in {backlog['load_seconds']:.0f} s)", "", ""),
        ("  deliveries/s, empty queue", _n(backlog["empty"]["deliveries_per_s"]), ""),
        ("  deliveries/s, with the backlog", _n(backlog["with_backlog"]["deliveries_per_s"]), ""),
        ("  ratio (median of per-repeat ratios)", f"{backlog['ratio']:.2f}", ">= 0.90"),
        ("  PostgreSQL CPU ms per 1,000: empty / backlog",
         f"{backlog['empty']['postgres_cpu_ms_per_1000']:.0f} / "
         f"{backlog['with_backlog']['postgres_cpu_ms_per_1000']:.0f}", ""),
    ]


def _slow_rows(slow: dict[str, Any]) -> list[Row]:
    return [
        (f"5. slow receivers: {slow['events']:,} deliveries to healthy endpoints, {slow['processes']} "
         "processes, HTTP timeout 2 s", "", ""),
        (f"  deliveries/s, {slow['endpoints']} healthy endpoints", _n(slow["all_healthy"]["deliveries_per_s"]), ""),
        (f"  same, {slow['endpoints'] - slow['slow_endpoints']} healthy beside {slow['slow_endpoints']} hanging "
         "(as many events to them)", _n(slow["half_slow"]["deliveries_per_s"]), ""),
        ("  ratio", f"{slow['ratio']:.2f}", ">= 0.90"),
    ]


def _fan_out_rows(fan: dict[str, Any]) -> list[Row]:
    m = fan["median"]
    if not m:
        return [("6. fan-out: no complete sample", "", "")]
    return [
        (f"6. fan-out: one event to {fan['endpoints']} endpoints, {fan['processes']} processes, "
         f"{fan['events']} events", "", ""),
        ("  commit to first / median / last receipt ms",
         f"{m['first_ms']:.1f} / {m['median_ms']:.1f} / {m['last_ms']:.1f}", ""),
        ("  events with a missing receipt", _n(fan["lost_events"]), "0"),
    ]


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}, PostgreSQL {m['postgresql']}; "
             f"database, sink and deliverers on this one machine; medians of {results['repeat']} runs"]
    sink = results.get("sink")
    if sink:
        lines.append(f"sink alone: {sink['requests_per_s']:,.0f} requests/s from a raw keep-alive client "
                     f"({sink['connections']} connections), using {sink['sink_core_share']:.0%} of a core: "
                     f"{sink['sink_cpu_ms_per_1000']:.0f} CPU ms per 1,000 requests, "
                     f"i.e. ~{1e6 / sink['sink_cpu_ms_per_1000']:,.0f} requests/s per core")
    rows: list[Row] = []
    for key, render in (("drain", _drain_rows), ("latency", _latency_rows), ("publish", _publish_rows),
                        ("backlog", _backlog_rows), ("slow_receivers", _slow_rows), ("fan_out", _fan_out_rows)):
        if key in results:
            rows += render(results[key])
    width = max(len(r[0]) for r in rows) + 2
    value_width = max(len(r[1]) for r in rows) + 2
    lines.append(f"{'measure':<{width}}{'value':>{value_width}}  target")
    lines += [f"{measure:<{width}}{value:>{value_width}}  {target}".rstrip() for measure, value, target in rows]
    if "backlog" in results:
        lines += ["", "claim_deliveries plan on the backlog queue (EXPLAIN ANALYZE, rolled back):",
                  results["backlog"]["claim_plan"]]
    return "\n".join(lines)


def write(results: dict[str, Any], path: Path | None = None) -> Path:
    path = path or RESULTS / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    return path
