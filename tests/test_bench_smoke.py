"""The benchmark keeps working: a short run of it, not a measurement."""

import os
import subprocess
import sys


def test_bench_smoke(pg_server: str) -> None:
    """`python -m bench` with tiny numbers runs end to end and loses nothing."""
    env = {**os.environ, "BENCH_DATABASE_URL": pg_server}
    result = subprocess.run([sys.executable, "-m", "bench", "--events", "300", "--latency-samples", "5",
                             "--repeat", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deliveries/s" in result.stdout

