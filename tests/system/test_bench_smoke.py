"""The benchmark keeps working: its --quick run, not a measurement."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_quick(pg_server: str, tmp_path: Path) -> None:
    """`python -m bench --quick` runs every scenario end to end and loses and duplicates nothing."""
    output = tmp_path / "bench.json"
    env = {**os.environ, "BENCH_DATABASE_URL": pg_server}
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--output", str(output)], env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deliveries/s" in result.stdout
    results = json.loads(output.read_text())
    assert {"drain", "latency", "publish", "backlog", "slow_receivers", "fan_out"} <= results.keys()
    for processes, run in results["drain"]["by_processes"].items():
        assert (run["lost"], run["duplicates"], run["succeeded"]) == (0, 0, run["deliveries"]), processes
    assert all(run["lost"] == 0 for run in results["latency"]["by_rate"].values())
    assert results["fan_out"]["lost_events"] == 0
