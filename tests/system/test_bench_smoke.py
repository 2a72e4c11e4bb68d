"""The benchmark keeps working: its --quick run, not a measurement."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_quick(pg_server: str, tmp_path: Path) -> None:
    """`python -m bench --quick` runs the first six scenarios, tracing's and the HTTP clients' end to end and
    loses and duplicates nothing; with export on, the spans reach the sink over OTLP."""
    output = tmp_path / "bench.json"
    env = {**os.environ, "BENCH_DATABASE_URL": pg_server}
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only",
                             "drain,latency,publish,backlog,slow,fanout,tracing,clients", "--output", str(output)],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deliveries/s" in result.stdout
    results = json.loads(output.read_text())
    assert {"drain", "latency", "publish", "backlog", "slow_receivers", "fan_out"} <= results.keys()
    for processes, run in results["drain"]["by_processes"].items():
        assert (run["lost"], run["duplicates"], run["succeeded"]) == (0, 0, run["deliveries"]), processes
    assert all(run["lost"] == 0 for run in results["latency"]["by_rate"].values())
    assert results["fan_out"]["lost_events"] == 0
    for label in ("export_off", "export_on"):
        assert (results["tracing"][label]["lost"], results["tracing"][label]["duplicates"]) == (0, 0), label
    assert results["tracing"]["export_on"]["spans_posts"] > 0
    for label in ("default", "aiohttp"):
        assert (results["http_clients"][label]["lost"], results["http_clients"][label]["duplicates"]) == (0, 0)


def test_bench_quick_scale(pg_server: str, tmp_path: Path) -> None:
    """The horizontal-scale scenarios (hot, peers, floor, mix, wakeups) run end to end at --quick sizes.

    A peer that cannot run here (no node or npm) is reported, not failed; whatever ran lost nothing.
    """
    output = tmp_path / "bench.json"
    env = {**os.environ, "BENCH_DATABASE_URL": pg_server}
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only",
                             "hot,peers,floor,mix,wakeups,limits", "--output", str(output)],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(output.read_text())
    assert {"hot", "peers", "floor", "mix", "wakeups", "limits"} <= results.keys()
    assert results["limits"]["peak_concurrency"] <= results["limits"]["max_in_flight"]
    for system, run in results["peers"]["by_system"].items():
        if "unavailable" not in run:
            assert (run["lost"], run["duplicates"]) == (0, 0), system
    assert results["floor"]["by_system"]["floor"]["lost"] == 0
    assert results["mix"]["all_healthy"]["healthy_undelivered"] == 0
    assert all(run["lost"] == 0 for run in results["wakeups"]["by_processes"].values())
    assert all(run["claims_per_event"] > 0 for run in results["wakeups"]["by_processes"].values())
