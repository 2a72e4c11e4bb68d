"""What the ``deliverer`` command prints: tables, their headings and rows, and JSON.

A table is drawn with rich for a person at a terminal and as plain aligned columns
into a pipe or a file, which scripts can cut and grep; ``--json`` is for programs.
The demo prints the same delivery and attempt tables, so this module imports
neither the commands nor ``deliverer.dev``.
"""

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from rich import box
from rich.console import Console
from rich.table import Table

from deliverer.history import logs as history
from deliverer.history.projection import Difference
from deliverer.registry.endpoints import Endpoint
from deliverer.settings import Settings
from outbox.ids import delivery_public_id, event_public_id

DELIVERY_HEADERS = ["delivery", "event", "type", "endpoint", "url", "state", "series", "attempts", "due",
                    "updated"]
ATTEMPT_HEADERS = ["time", "type", "delivery", "attempt", "kind", "outcome", "status", "ms", "error"]
LOG_HEADERS = ["time", "event type", "event", "delivery", "attempt", "outcome", "status", "ms", "error"]
ENDPOINT_HEADERS = ["id", "org", "url", "events", "enabled", "max in flight", "rate limit/s", "ordering", "headers",
                    "auth"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%H:%M:%S.%f")[:-3]
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    text = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    return "\n".join(lines)


UNBROKEN = frozenset({"id", "url", "delivery", "event", "endpoint", "max in flight", "rate limit/s"})
"""Columns kept on one line: identifiers and URLs are copied, and a limit split over lines misreads."""


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """``rows`` under ``headers``: a rich table on a terminal (long cells wrap, but never an id or a URL,
    which people copy), aligned text otherwise."""
    if not sys.stdout.isatty():
        print(format_table(headers, rows))
        return
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", caption=f"{len(rows)} rows")
    for header in headers:
        table.add_column(header, no_wrap=header in UNBROKEN)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    Console().print(table)


def _json_default(value: Any) -> str:
    """Times as ISO-8601, anything else (UUIDs) as its text."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def print_json(value: Any) -> None:
    print(json.dumps(value, default=_json_default, indent=2))


def delivery_rows(conn: psycopg.Connection, org_id: str | None, limit: int) -> list[list[Any]]:
    """Deliveries (of the org, unless None), newest events first, as DELIVERY_HEADERS rows."""
    return [[delivery_public_id(d.delivery_id), event_public_id(d.event_id), d.event_type, d.endpoint_id, d.url,
             d.state, d.series, d.attempt, d.due_at, d.updated_at]
            for d in history.delivery_summaries(conn, org_id, limit)]


def attempt_rows(conn: psycopg.Connection, org_id: str | None) -> list[list[Any]]:
    """Every attempt (of the org, unless None), oldest first, as ATTEMPT_HEADERS rows."""
    return [[a.at, a.event_type, delivery_public_id(a.delivery_id), a.attempt, a.kind, a.outcome, a.http_status,
             a.duration_ms, a.error_message] for a in history.attempt_history(conn, org_id)]


def log_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    """Attempts in their JSON shape (history.logs.attempts) as LOG_HEADERS rows."""
    return [[i["timestamp"], i["event_type"], i["event_id"], i["delivery_id"], i["attempt"], i["outcome"],
             i["http_status"], i["response_time_ms"], i["error_message"]] for i in items]


def print_endpoints(items: list[Endpoint], as_json: bool, settings: Settings) -> None:
    """A table, or JSON (where a limit that is the default is null); ``settings`` give the defaults shown."""
    if as_json:
        print_json([e.as_json() for e in items])
        return
    print_table(ENDPOINT_HEADERS, [
        [e.id, e.org_id, e.url, ",".join(e.event_types or ["*"]), e.enabled, *limit_cells(e, settings),
         e.ordering, ",".join(e.header_names or []), e.auth_type or ""]
        for e in items])


def limit_cells(endpoint: Endpoint, settings: Settings) -> list[str]:
    """The endpoint's limits, a default one as what it is now, e.g. "50 (default)"."""
    default_rate = f"{settings.endpoint_rate_limit:g}" if settings.endpoint_rate_limit else "none"
    return [f"{endpoint.max_in_flight}" if endpoint.max_in_flight is not None
            else f"{settings.endpoint_max_in_flight} (default)",
            f"{endpoint.rate_limit:g}" if endpoint.rate_limit is not None else f"{default_rate} (default)"]


def print_new_endpoint(endpoint: Endpoint, settings: Settings) -> None:
    print(f"endpoint {endpoint.id} registered for {endpoint.org_id}: {endpoint.url}")
    print(f"events: {','.join(endpoint.event_types or ['*'])}")
    most, rate = limit_cells(endpoint, settings)
    print(f"max in flight: {most}; rate limit/s: {rate}")
    if endpoint.ordering != "none":
        print(f"ordering: {endpoint.ordering} (one at a time per ordering key, in publish order)")
    if endpoint.header_names:
        print(f"headers: {', '.join(endpoint.header_names)} (values sealed, not shown again)")
    if endpoint.auth_type:
        print(f"auth: {endpoint.auth_type} (credentials sealed, not shown again)")
    print(f"secret: {endpoint.secret}")
    print("Copy the secret now: it is not shown again.")


def difference_line(d: Difference) -> str:
    """One row where the live queue and the log disagree, as ``rebuild-projections --check`` lists it."""
    return " ".join(str(v) for v in (d.side, delivery_public_id(d.delivery_id), d.event_id, d.endpoint_id,
                                     d.org_id, d.series, d.attempt, d.due_at, d.leased_by))
