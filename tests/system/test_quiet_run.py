"""A test run's output ends with pytest's summary line, whatever the run started."""

import os
import re
import subprocess
import sys

from tests.support.paths import ROOT

# A test that runs a command in-process (which configures logging onto the test's
# captured stderr) and one that needs a database: without OUTBOX_TEST_DATABASE_URL
# that starts the embedded PostgreSQL, whose cleanup at exit logs.
TESTS = [
    "tests/unit/test_probes.py::test_logged_tracebacks_carry_no_locals_or_secrets",
    "tests/integration/test_schedule.py",
]


def test_nothing_follows_the_summary_line() -> None:
    """With the embedded server and in-process logging setup, the last line printed is pytest's summary."""
    env = {k: v for k, v in os.environ.items() if k != "OUTBOX_TEST_DATABASE_URL"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    output = (result.stdout + result.stderr).rstrip().splitlines()
    assert result.returncode == 0, "\n".join(output)
    assert re.fullmatch(r"=* ?\d+ passed.* in [\d.]+s ?=*", output[-1]), "\n".join(output[-15:])
    assert result.stderr == "", result.stderr
