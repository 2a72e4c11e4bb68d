"""The documentation's generated tables follow the code they are written from."""

import re
from dataclasses import fields

from deliverer import settings
from deliverer.dev import docs
from tests.support.paths import ROOT


def test_generated_tables_are_current() -> None:
    """The settings and metrics tables in docs/ are what the code renders now; `make docs-tables` rewrites them."""
    assert docs.stale() == [], "run `make docs-tables` (python -m deliverer.dev.docs) and commit docs/"


def test_every_setting_is_declared_with_a_variable_and_a_meaning() -> None:
    """Each Settings field names its own environment variable and says what it means."""
    variables = [f.metadata["env"] for f in fields(settings.Settings)]
    assert len(set(variables)) == len(variables)
    assert all(f.metadata["meaning"] for f in fields(settings.Settings))


def test_every_variable_the_deliverer_reads_is_in_the_settings_table() -> None:
    """No DELIVERER_* name in the code is missing from the table: the ones read outside Settings are in ELSEWHERE."""
    named = set()
    for path in (ROOT / "deliverer").rglob("*.py"):
        named |= set(re.findall(r"\bDELIVERER_[A-Z_]+[A-Z]\b", path.read_text()))
    table = docs.settings_table()
    assert sorted(name for name in named if f"`{name}`" not in table) == []
