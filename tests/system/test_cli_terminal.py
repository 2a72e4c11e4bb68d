"""The deliverer command as a person at a terminal meets it: one-line refusals with documented
exit codes, tables, progress bars with counts and ETAs, and --json for scripts."""

import asyncio
import json

import psycopg
import pytest

from deliverer.registry import endpoints
from deliverer.storage import partitions, schema
from tests.support import failed_deliveries
from tests.support.processes import deliverer, deliverer_in_terminal

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nothing"


@pytest.mark.parametrize(("database", "args", "env", "says"), [
    ("test", ("endpoints", "add", "--org", "org_a", "--url", "https://x.example/h"),
     {"DELIVERER_SECRET_KEYS": ""}, "generate-encryption-key"),
    ("test", ("deliveries", "--limit", "x"), {}, "invalid int value: 'x' (see `deliverer deliveries --help`)"),
    ("test", ("bogus",), {}, "invalid choice: 'bogus'"),
    ("test", ("endpoints", "add", "--url", "https://x.example/h"), {},
     "one of the arguments --org --operator is required"),
    ("test", ("logs", "--event-type", "job.exploded"), {}, "--event-type must be one of job.completed"),
    ("test", ("retention", "--older-than", "soon"), {}, "--older-than"),
    ("unreachable", ("deliveries",), {}, "cannot connect to the database"),
    ("none", ("migrate",), {}, "set DATABASE_URL"),
])
def test_every_refusal_is_one_line_on_stderr_with_status_2(dsn: str, database: str, args: tuple[str, ...],
                                                            env: dict[str, str], says: str) -> None:
    """A wrong argument, setting or database is one line saying what to fix, status 2, nothing on stdout."""
    result = deliverer({"test": dsn, "unreachable": UNREACHABLE, "none": None}[database], *args, **env)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.startswith("deliverer") and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr


def test_data_commands_print_json_for_scripts(dsn: str, db: psycopg.Connection) -> None:
    """Each command that prints data prints one JSON document with --json."""
    endpoint_id, [delivery_id] = asyncio.run(failed_deliveries(dsn, db, 1))
    since = ("--since", "2024-01-01T00:00:00Z")
    commands = [
        ("migrate",), ("endpoints", "list"), ("endpoints", "disable", endpoint_id),
        ("endpoints", "enable", endpoint_id), ("endpoints", "update", endpoint_id, "--description", "ops"),
        ("deliveries",), ("logs", *since), ("keys", "create", "--org", "org_a"),
        ("keys", "generate-encryption-key"), ("reseal",), ("rebuild-projections", "--check"),
        ("rebuild-projections",), ("retention", "--older-than", "30d", "--dry-run"),
        ("recover", "--endpoint", endpoint_id, *since, "--dry-run"), ("replay", delivery_id),
        ("recover", "--endpoint", endpoint_id, *since),
    ]
    for command in commands:
        result = deliverer(dsn, *command, "--json")
        assert result.returncode == 0, (command, result.stderr)
        json.loads(result.stdout)
        assert result.stderr == "", (command, result.stderr)  # no bar into a pipe either


def test_tables_are_drawn_on_a_terminal_and_plain_in_a_pipe(dsn: str, db: psycopg.Connection) -> None:
    """endpoints list is a rich table (bold headings, a rule, a row count) on a terminal, aligned text in a pipe."""
    endpoints.add(db, org_id="org_a", url="https://hooks.example/a", allow_insecure=True)
    status, raw, text = deliverer_in_terminal(dsn, "endpoints", "list")
    assert status == 0, text
    assert "\x1b[1m" in raw and "─" in text and "1 row" in text
    assert "https://hooks.example/a" in text and "50 (default)" in text
    piped = deliverer(dsn, "endpoints", "list")
    assert "\x1b[" not in piped.stdout and piped.stdout.splitlines()[1].startswith("--")


def test_long_operations_show_progress_with_counts_and_an_eta(dsn: str, db: psycopg.Connection) -> None:
    """rebuild-projections, retention and recover each draw a bar with done/total, elapsed and ETA on stderr."""
    endpoint_id, _ = asyncio.run(failed_deliveries(dsn, db, 1))
    runs = {
        "rebuilding delivery_queue": ("rebuild-projections",),
        "partitions": ("retention", "--older-than", "30d"),
        "replaying": ("recover", "--endpoint", endpoint_id, "--since", "2024-01-01T00:00:00Z"),
    }
    for step, command in runs.items():
        status, _, text = deliverer_in_terminal(dsn, *command)
        assert status == 0, text
        done, total = finished_bar(text, step)
        assert done == total and total > 0
    assert "replayed 1 failed deliveries" in text


def finished_bar(text: str, step: str) -> tuple[int, int]:
    """The count (done, total) of the step's bar as last drawn; it shows the time elapsed and an ETA."""
    bar = [line for line in text.replace("\r", "\n").splitlines() if line.startswith(step)]
    assert bar, text
    assert "elapsed" in bar[-1] and "ETA" in bar[-1], bar[-1]
    done, total = bar[-1].split("━")[-1].split()[0].split("/")
    return int(done), int(total)


def test_migrate_shows_its_statements_and_the_partitions_it_creates(empty_dsn: str) -> None:
    """On a new database migrate draws a bar through schema.sql's statements, then one through the partitions."""
    statements = len(schema.statements(schema.schema_sql()))
    status, _, text = deliverer_in_terminal(empty_dsn, "migrate")
    assert status == 0, text
    assert finished_bar(text, schema.APPLYING) == (statements, statements)
    assert finished_bar(text, partitions.CREATING) == (2 * (partitions.DAYS_AHEAD + 2),) * 2
    assert text.rstrip().endswith("schema is up to date")


def test_migrate_prints_only_its_result_into_a_pipe(empty_dsn: str) -> None:
    """Without a terminal migrate prints what it printed before its bars: one line, or one JSON document."""
    first = deliverer(empty_dsn, "migrate")
    assert (first.returncode, first.stdout, first.stderr) == (0, "schema is up to date\n", "")
    again = deliverer(empty_dsn, "migrate", "--json")
    assert (again.returncode, json.loads(again.stdout), again.stderr) == (
        0, {"schema": "up to date", "partitions": []}, "")
