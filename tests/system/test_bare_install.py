"""`pip install docextract-webhooks`, without extras, is the producer side alone: outbox on psycopg.

The wheel is built from this worktree and installed into a fresh virtual
environment; only its dependencies, psycopg and opentelemetry-api (the trace
context stored with each event), come from the package index.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from tests.support import count
from tests.support.paths import ROOT

PUBLISH = textwrap.dedent("""
    import sys, psycopg, outbox
    with psycopg.connect(sys.argv[1]) as conn:
        print(outbox.publish(conn, "webhook.test", {"message": "hi", "timestamp": "2024-11-23T10:00:00Z"},
                             org_id="org_a"))
""")

EXTRA_HINT = "pip install 'docextract-webhooks[deliverer]'"


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the package's wheel installed, no extras."""
    tmp = tmp_path_factory.mktemp("bare")
    wheels = tmp / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT))
    [wheel] = wheels.glob("docextract_webhooks-*.whl")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    # This environment's pip installs into the new one (pip's --python), which so needs no pip of its own.
    _run(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", str(wheel))
    return venv


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_bare_install_publishes(bare_venv: Path, dsn: str, db: psycopg.Connection) -> None:
    """outbox.publish works from the bare install and commits the event, with nothing of the deliverer's installed."""
    python = str(bare_venv / "bin" / "python")
    installed = _run(python, "-c", "import importlib.util as u; print([m for m in ('sqlalchemy', 'aiohttp', "
                     "'structlog', 'prometheus_client', 'cryptography') if u.find_spec(m)])")
    assert installed.stdout.strip() == "[]"
    event_id = _run(python, "-c", PUBLISH, dsn).stdout.strip()
    assert event_id.startswith("evt_")
    assert count(db, "outbox_event") == 1


def test_the_deliverer_without_its_extra_says_which_to_install(bare_venv: Path) -> None:
    """Importing deliverer raises one line naming the extra; the deliverer command prints it and exits non-zero."""
    python = str(bare_venv / "bin" / "python")
    imported = subprocess.run([python, "-c", "import deliverer"], capture_output=True, text=True, check=False)
    assert imported.returncode == 1
    assert imported.stderr.strip().splitlines()[-1].startswith("ModuleNotFoundError: the deliverer needs the "
                                                                "[deliverer] extra")
    for command in ([str(bare_venv / "bin" / "deliverer"), "run"], [python, "-m", "deliverer", "run"]):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.startswith("deliverer: error: the deliverer needs the [deliverer] extra")
        assert line.endswith(EXTRA_HINT)
