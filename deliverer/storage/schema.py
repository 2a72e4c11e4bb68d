"""Applying schema.sql, the single source of truth for the database layout."""

import re
from datetime import datetime
from importlib import resources

import psycopg

from deliverer.ops.progress import Progress, quiet
from deliverer.storage import partitions
from deliverer.storage.queries import QUERIES

APPLYING = "applying schema.sql"  # the progress step of migrate

# Where a semicolon does not end a statement: a comment, a quoted string or identifier, a
# dollar-quoted body ($$ or $tag$, as DO blocks and functions have). What schema.sql can hold, not
# all of PostgreSQL's lexer: no E'' strings with backslash escapes, no nested /* */.
_TOKEN = re.compile(r"""--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$(?:[A-Za-z_]\w*)?\$).*?\1|;""",
                    re.DOTALL)
_QUALIFIERS = re.compile(r" (IF NOT EXISTS|OR REPLACE)\b")


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


def statements(text: str) -> list[str]:
    """``text`` cut after every semicolon that ends a statement, each piece with the comments above it.

    Joined, the pieces are ``text`` again, less what follows the last statement if that is only
    comments and blank lines.
    """
    pieces, start = [], 0
    for token in _TOKEN.finditer(text):
        if token[0] == ";":
            pieces.append(text[start:token.end()])
            start = token.end()
    if _code_lines(text[start:]):
        pieces.append(text[start:])
    return pieces


def _code_lines(statement: str) -> list[str]:
    lines = (line.strip() for line in statement.splitlines())
    return [line for line in lines if line and not line.startswith("--")]


def label(statement: str) -> str:
    """What the progress bar calls a statement: its first line, as far as a parenthesis and without
    IF NOT EXISTS or OR REPLACE; a DO block, whose first line says nothing, the comment opening its body."""
    lines = [line.strip() for line in statement.splitlines() if line.strip()]
    at = next(i for i, line in enumerate(lines) if not line.startswith("--"))
    first, then = lines[at], lines[at + 1:at + 2]
    if first.startswith("DO") and then and then[0].startswith("--"):
        return then[0].removeprefix("--").strip()
    return _QUALIFIERS.sub("", first.split("(")[0]).removesuffix(" AS").rstrip(" ;")


def migrate(conn: psycopg.Connection, now: datetime | None = None,
            progress: Progress = quiet) -> list[partitions.Decision]:
    """Apply the schema and create the partitions around ``now``, in one transaction.

    Safe to run again and from many pods at once. Returns what partition
    maintenance did (see deliverer.partitions.ensure). The statements go one at a
    time, so that ``progress`` can say which one an upgrade that rewrites a table is on.
    """
    steps = statements(schema_sql())
    with conn.transaction():
        conn.execute(QUERIES["lock_migrations"])
        for done, statement in enumerate(steps):
            progress(APPLYING, done, len(steps), label(statement))
            conn.execute(statement)
        progress(APPLYING, len(steps), len(steps))
        return partitions.ensure(conn, now, progress=progress)
