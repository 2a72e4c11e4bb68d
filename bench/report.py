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


def _tracing_rows(t: dict[str, Any]) -> list[Row]:
    off, on = t["export_off"], t["export_on"]
    return [
        (f"13. tracing: {t['events']:,} events published in a trace, {t['processes']} processes, "
         f"{t['endpoints']} endpoints", "", ""),
        ("  export off: deliveries/s; deliverer CPU per delivery",
         f"{_n(off['deliveries_per_s'])}; {_us(off['deliverer_cpu_ms_per_1000'])}", ""),
        ("  every attempt a span, exported over OTLP: deliveries/s; deliverer CPU per delivery",
         f"{_n(on['deliveries_per_s'])}; {_us(on['deliverer_cpu_ms_per_1000'])}", ""),
        ("  export on vs off: deliveries/s ratio", f"{t['ratio']:.2f}", ""),
        ("  OTLP export requests to the sink (on)", _n(on["spans_posts"]), ""),
        ("  duplicates / lost (on)", f"{on['duplicates']:.0f} / {on['lost']:.0f}", "0 / 0"),
    ]


def _clients_rows(c: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [(f"14. HTTP clients: {c['events']:,} queued events, {c['processes']} processes, "
                        f"{c['endpoints']} endpoints", "", "")]
    for label in ("default", "aiohttp"):
        r = c[label]
        rows.append((f"  {label}: deliveries/s; deliverer CPU per delivery",
                     f"{_n(r['deliveries_per_s'])}; {_us(r['deliverer_cpu_ms_per_1000'])}", ""))
    rows += [("  aiohttp vs default: deliveries/s ratio", f"{c['ratio']:.2f}", ""),
             ("  duplicates / lost (aiohttp)", f"{c['aiohttp']['duplicates']:.0f} / {c['aiohttp']['lost']:.0f}",
              "0 / 0")]
    return rows


def _ordering_rows(o: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [(f"15. ordered delivery: one endpoint with all the traffic, {o['processes']} processes", "", "")]
    for label, text in (("unordered", "unordered"), ("fifo_50_keys", "fifo, 50 ordering keys"),
                        ("fifo_1_key", "fifo, one key (one request at a time)")):
        r = o[label]
        rows.append((f"  {text}, {o['events'][label]:,} events: deliveries/s; PostgreSQL CPU per delivery",
                     f"{_n(r['deliveries_per_s'])}; {_us(r['postgres_cpu_ms_per_1000'])}", ""))
    rows.append(("  duplicates / lost (fifo)", f"{sum(o[k]['duplicates'] for k in ('fifo_50_keys', 'fifo_1_key')):.0f}"
                 f" / {sum(o[k]['lost'] for k in ('fifo_50_keys', 'fifo_1_key')):.0f}", "0 / 0"))
    return rows


def _us(value: float) -> str:
    return f"{value:,.0f} µs"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _system_rows(name: str, r: dict[str, Any]) -> list[Row]:
    """One system's drain: rate, then CPU per delivery (ms per 1,000 = µs per delivery)."""
    if "unavailable" in r:
        return [(f"  {name}", "did not run", r["unavailable"][:60])]
    return [
        (f"  {name}: deliveries/s (first to last receipt)", _n(r["deliveries_per_s"]), ""),
        ("    PostgreSQL CPU per delivery, all its processes (workers' backends)",
         f"{_us(r['postgres_cpu_ms_per_1000'])} ({r['postgres_worker_backends_cpu_ms_per_1000']:,.0f})", ""),
        ("    worker CPU per delivery / DB transactions per 1,000",
         f"{_us(r['worker_cpu_ms_per_1000'])} / {r['transactions_per_1000']:,.0f}", ""),
        ("    duplicates / lost", f"{r['duplicates']:.0f} / {r['lost']:.0f}", "0 / 0"),
    ]


def _hot_rows(hot: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [(f"7. hot endpoint: {hot['events']:,} queued events, {hot['processes']} deliverer "
                        "processes", "", "")]
    matched = hot.get("matched_max_in_flight", 0)
    for name, label in (("deliverer", "over 10 endpoints"), ("deliverer hot", "all to 1 endpoint"),
                        ("deliverer hot matched", f"all to 1 endpoint with max_in_flight {matched}")):
        r = hot["by_system"].get(name)
        if r is None:
            continue
        rows += _system_rows(f"deliverer, {label}", r)
        rows.append(("    claims with rows / empty per 1,000; mean batch",
                     f"{r['claim_statements_with_rows'] * 1000 / r['deliveries']:.1f} / "
                     f"{r.get('empty_claims_per_1000', 0):.1f}; {r['mean_claim_batch']:.1f}", ""))
        roles = r.get("postgres_cpu_by_connection_ms_per_1000", {})
        if roles:
            rows.append(("    PostgreSQL CPU per delivery in the claims / outcomes connections",
                         f"{_us(roles.get('claims', 0))} / {_us(roles.get('outcomes', 0))}", ""))
    for name, label in (("deliverer hot", "1 endpoint"), ("deliverer hot matched", f"1 endpoint at {matched}")):
        r = hot.get("vs_10_endpoints", {}).get(name)
        if r is None:
            continue
        rows += [(f"  {label} vs 10: deliveries/s ratio", _ratio(r["rate_ratio"]), ">= 0.95"),
                 (f"  {label} vs 10: PostgreSQL / deliverer CPU per delivery ratio",
                  f"{_ratio(r['postgres_cpu_ratio'])} / {_ratio(r['deliverer_cpu_ratio'])}", "")]
    return rows


_COMPARE_HEADER: Row = ("  value: deliveries/s | PG µs per delivery (workers' backends) | worker µs | txn per 1,000",
                        "", "")


def _compare_row(name: str, r: dict[str, Any]) -> Row:
    """One system's drain on one line, for comparisons."""
    if "unavailable" in r:
        return (f"  {name}", "did not run", r["unavailable"][:80])
    lost = "" if not (r["duplicates"] or r["lost"]) else f"{r['duplicates']:.0f} duplicates, {r['lost']:.0f} lost"
    return (f"  {name}", f"{r['deliveries_per_s']:,.0f} | {r['postgres_cpu_ms_per_1000']:,.0f} "
            f"({r['postgres_worker_backends_cpu_ms_per_1000']:,.0f}) | {r['worker_cpu_ms_per_1000']:,.0f} | "
            f"{r['transactions_per_1000']:,.0f}", lost)


_LABELS = {"deliverer": "deliverer, 10 endpoints", "deliverer hot": "deliverer, 1 endpoint",
           "deliverer hot matched": "deliverer, 1 endpoint, peers' concurrency",
           "graphile-worker": "graphile-worker", "pgqueuer": "pgqueuer", "floor": "floor"}


def _peers_rows(peers: dict[str, Any]) -> list[Row]:
    g, q = peers["settings"]["graphile-worker"], peers["settings"]["pgqueuer"]
    rows: list[Row] = [
        (f"8. peers: the same {peers['events']:,} signed-webhook jobs, {peers['processes']} processes each", "", ""),
        (f"  settings: graphile-worker {g['concurrentJobs']} concurrent jobs, local queue {g['localQueue']['size']}, "
         "batched completion", "", ""),
        (f"            pgqueuer batch {q['batch_size']}, {q['max_concurrent_tasks']} in flight, asyncpg", "", ""),
        _COMPARE_HEADER,
    ]
    rows += [_compare_row(_LABELS[name], r) for name, r in peers["by_system"].items()]
    for name in ("graphile-worker", "pgqueuer"):
        rate, pg = peers["rate_vs_deliverer"].get(name), peers["postgres_cpu_vs_deliverer"].get(name)
        rows.append((f"  {name} vs deliverer (10 endpoints): rate / PostgreSQL CPU per delivery",
                     f"{_ratio(rate)} / {_ratio(pg)}", ""))
    for name, target in (("deliverer hot", ""), ("deliverer hot matched", ">= 1.5 (floor 1.1)")):
        if name in peers.get("hot_vs_graphile_worker", {}):
            rows.append((f"  {_LABELS[name]} vs graphile-worker: rate",
                         _ratio(peers["hot_vs_graphile_worker"][name]), target))
    return rows


def _floor_rows(floor: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [(f"9. floor: a lease-and-delete queue with no log, {floor['events']:,} jobs, "
                        f"{floor['processes']} processes", "", ""), _COMPARE_HEADER]
    rows += [_compare_row(_LABELS[name], r) for name, r in floor["by_system"].items()]
    rows += [
        ("  deliverer's PostgreSQL CPU per delivery / floor's: 10 endpoints / 1 / 1 at peers' concurrency",
         f"{_ratio(floor['deliverer_vs_floor'])} / {_ratio(floor['deliverer_hot_vs_floor'])} / "
         f"{_ratio(floor.get('deliverer_hot_matched_vs_floor'))}", "<= 1.5"),
        ("  deliverer's PostgreSQL CPU per delivery / graphile-worker's: 10 / 1 / 1 at peers' concurrency",
         f"{_ratio(floor['deliverer_vs_graphile_worker'])} / {_ratio(floor['deliverer_hot_vs_graphile_worker'])} / "
         f"{_ratio(floor.get('deliverer_hot_matched_vs_graphile_worker'))}", "<= 1.5"),
        ("  graphile-worker's / floor's", _ratio(floor["graphile_worker_vs_floor"]), ""),
    ]
    return rows


def _mix_rows(mix: dict[str, Any]) -> list[Row]:
    share = mix["traffic_share"]
    rows: list[Row] = [(f"10. mix: {mix['endpoints']:,} endpoints, Zipf s={mix['zipf_s']:g}, {mix['rate']:g} events/s "
                        f"for {mix['seconds']:g} s, {mix['processes']} processes, receivers log-normal "
                        f"(median {mix['latency']['median_ms']} ms, p99 1 s)", "", ""),
                       ("  traffic to the busiest / top 5 / hanging / failing endpoints",
                        f"{share['busiest']:.0%} / {share['top5']:.0%} / {share['hanging']:.1%} / "
                        f"{share['failing']:.1%}", "")]
    for key, label in (("all_healthy", "all healthy"), ("mixed", "5% hanging, 5% answering 500")):
        r = mix[key]
        rows += [
            (f"  {label}: healthy deliveries/s (of {r['healthy_offered_per_s']:,.0f}/s committed; all events "
             f"{r['achieved_per_s']:,.0f}/s)", _n(r["healthy_deliveries_per_s"]), ""),
            ("    share of healthy events delivered before the producers stopped",
             f"{r['healthy_delivered_by_last_commit']:.1%}", ""),
            ("    healthy commit to receipt p50 / p99 / max ms",
             f"{r['healthy_p50_ms']:.1f} / {r['healthy_p99_ms']:.1f} / {r['healthy_max_ms']:,.0f}", ""),
            ("    healthy deliveries not received 30 s after the last commit", _n(r["healthy_undelivered"]), "0"),
            ("    peak concurrency at one endpoint (which) / top 5 / hanging max",
             f"{r['peak_concurrency_any_endpoint']} ({r['peak_concurrency_endpoint'].rsplit('/', 1)[1]}) / "
             f"{','.join(str(n) for n in r['peak_concurrency_top5'])} / {r['peak_concurrency_hanging_max']}", ""),
            ("    each worker's peak RSS MiB", " ".join(f"{m:.0f}" for m in r["worker_peak_rss_mib"]), ""),
            ("    deliverer / PostgreSQL CPU ms per event",
             f"{r['deliverer_cpu_ms_per_event']:.2f} / {r['postgres_cpu_ms_per_event']:.2f}", ""),
        ]
    rows += [("  mixed vs all healthy: healthy deliveries/s ratio (per healthy event/s committed)",
              _ratio(mix["rate_ratio"]), ">= 0.95"),
             ("  mixed vs all healthy: healthy p99 ratio", _ratio(mix["p99_ratio"]), "")]
    return rows


def _wakeups_rows(w: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [(f"11. wake-ups: producer at {w['rate']:g} events/s, one per transaction, for "
                        f"{w['seconds']:g} s", "", "")]
    for count, r in w["by_processes"].items():
        rows += [
            (f"  {count} processes: empty claims / claims / DB transactions per event",
             f"{r['empty_claims_per_event']:.2f} / {r['claims_per_event']:.2f} / {r['transactions_per_event']:.1f}",
             ""),
            ("    commit to receipt p50 / p99 / max ms", f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.0f}",
             ""),
            ("    deliverer / PostgreSQL CPU ms per event",
             f"{r['deliverer_cpu_ms_per_event']:.2f} / {r['postgres_cpu_ms_per_event']:.2f}", ""),
            ("    lost", _n(r["lost"]), "0"),
        ]
    counts = list(w["by_processes"])
    rows += [(f"  {counts[-1]} vs {counts[0]} processes: empty claims per event ratio / p99 ratio",
              f"{_ratio(w['empty_claims_ratio'])} / {_ratio(w['p99_ratio'])}", "")]
    return rows


def _limits_rows(lim: dict[str, Any]) -> list[Row]:
    bound = 1.1 * lim["rate_limit"] * 10
    return [
        (f"12. endpoint limits, {lim['processes']} processes", "", ""),
        (f"  max_in_flight {lim['max_in_flight']}, receiver 300 ms: peak concurrency the sink saw",
         _n(lim["peak_concurrency"]), f"<= {lim['max_in_flight']}"),
        (f"  rate_limit {lim['rate_limit']:g}/s: most deliveries in any 10 s / overall rate",
         f"{lim['rated_most_in_10s']} / {lim['rated_rate_per_s']:.1f}/s", f"<= {bound:.0f}"),
        ("  duplicates / lost", f"{lim['duplicates']} / {lim['lost']}", "0 / 0"),
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
                        ("backlog", _backlog_rows), ("slow_receivers", _slow_rows), ("fan_out", _fan_out_rows),
                        ("hot", _hot_rows), ("peers", _peers_rows), ("floor", _floor_rows), ("mix", _mix_rows),
                        ("wakeups", _wakeups_rows), ("limits", _limits_rows), ("tracing", _tracing_rows),
                        ("http_clients", _clients_rows), ("ordering", _ordering_rows)):
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
