"""The tables in docs/ that are written from the code: the settings and the metrics.

Each lives in its page between two markers::

    <!-- generated: settings (make docs-tables) -->
    ...
    <!-- end generated: settings -->

``python -m deliverer.dev.docs`` (``make docs-tables``) rewrites what is between
them; ``--check`` changes nothing and exits 1 naming the stale pages, which is
what tests/unit/test_docs.py asserts against.
"""

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from prometheus_client import CollectorRegistry

from deliverer import settings
from deliverer.ops.metrics import DB_OPERATIONS, OUTCOME_CLASSES, Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs"

# The bounded values of a label, where one set of them is written down in the code.
_LABEL_VALUES = {"outcome": OUTCOME_CLASSES, "operation": DB_OPERATIONS}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def settings_table() -> str:
    """Every setting: its variable, its flag, its default and what it means."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for f in fields(settings.Settings):
        shown = f.metadata["shown"] if f.metadata["shown"] is not None else f"{f.default:g}" \
            if isinstance(f.default, float) else f"{f.default}"
        rows.append(f"| `{f.metadata['env']}` | `{_flag(f.name)}` | {shown} | {f.metadata['meaning']} |")
    for var in settings.ELSEWHERE:
        flag = f"`{var.flag}`" if var.flag else ""
        rows.append(f"| `{var.env}` | {flag} | {var.default} | {var.meaning} |")
    return "\n".join(rows)


def metrics_table() -> str:
    """Every metric family the deliverer and the API export: name, type, labels, help text."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in vars(Metrics(CollectorRegistry())).values():
        [family] = metric.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        # prometheus_client keeps a metric's label names only privately; a family with no samples yet lists none.
        described = [f"`{label}`" + (f": {', '.join(_LABEL_VALUES[label])}" if label in _LABEL_VALUES else "")
                     for label in metric._labelnames]
        rows.append(f"| `{name}` | {family.type} | {'; '.join(described)} | {family.documentation} |")
    return "\n".join(rows)


TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "settings": ("configuration.md", settings_table),
    "metrics": ("operations.md", metrics_table),
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {name} [^>]*-->\n).*?(<!-- end generated: {name} -->)", re.DOTALL)


def rendered(docs: Path = DOCS) -> dict[Path, str]:
    """Each page holding a generated table, as it should read now."""
    pages: dict[Path, str] = {}
    for name, (page, table) in TABLES.items():
        path = docs / page
        text = pages.get(path) or path.read_text()
        block = _block(name).search(text)
        if block is None:
            raise SystemExit(f"docs: {path} has no '<!-- generated: {name} ... -->' block to write the table into")
        # Blank lines around the table: Markdown would read it as part of an HTML comment block otherwise.
        pages[path] = text[:block.end(1)] + "\n" + table() + "\n\n" + text[block.start(2):]
    return pages


def stale(docs: Path = DOCS) -> list[Path]:
    return [path for path, text in rendered(docs).items() if path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deliverer.dev.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"docs: {path} is stale: run `make docs-tables`", file=sys.stderr)
        return 1 if out_of_date else 0
    for path, text in rendered().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"docs: rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
