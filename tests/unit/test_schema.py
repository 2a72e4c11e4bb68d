"""schema.sql as a file: the schema the package applies is the one at the top of the repository.

Migrations, upgrades from released schemas and the integrity the database enforces are in
tests/integration/test_schema.py.
"""

import re

from deliverer.storage import schema
from tests.support.paths import SCHEMA_SQL


def test_packaged_schema_is_the_top_level_file() -> None:
    """The schema the installed package applies is schema.sql at the top of the repository."""
    assert schema.schema_sql() == SCHEMA_SQL.read_text()


def test_schema_splits_into_statements_that_join_back_into_the_file() -> None:
    """Cut after each statement's semicolon, the pieces join into schema.sql again; each holds one statement."""
    text = schema.schema_sql()
    pieces = schema.statements(text)
    joined = "".join(pieces)
    assert text.startswith(joined) and text[len(joined):].strip() == ""
    # Every statement of schema.sql starts a line with one of these, a line inside one never does:
    # counted apart from the splitter. 4 DO blocks among them: a semicolon inside one must not end it.
    assert len(pieces) == len(re.findall(r"(?m)^(?:CREATE|ALTER|DO)\b", text))
    assert all(piece.rstrip().endswith(";") for piece in pieces)
    assert sum(piece.lstrip().startswith("DO $$") or "\nDO $$\n" in piece for piece in pieces) == 4


def test_semicolons_in_comments_strings_and_dollar_quotes_end_nothing() -> None:
    """Only a semicolon outside comments, quotes and dollar quotes ends a statement; a last one may have none."""
    text = ("-- a comment; with a semicolon and an apostrophe's\n"
            "SELECT 'a;b', 'it''s;', \"odd;name\" FROM t;\n"
            "DO $body$ BEGIN PERFORM 1; PERFORM $$x;$$; END; $body$;\n"
            "/* block; comment */ SELECT 2;\n"
            "SELECT 3\n"
            "-- trailing; comment\n")
    assert schema.statements(text) == [
        "-- a comment; with a semicolon and an apostrophe's\nSELECT 'a;b', 'it''s;', \"odd;name\" FROM t;",
        "\nDO $body$ BEGIN PERFORM 1; PERFORM $$x;$$; END; $body$;",
        "\n/* block; comment */ SELECT 2;",
        "\nSELECT 3\n-- trailing; comment\n",
    ]
    assert schema.statements("SELECT 1;\n-- nothing after it\n\n") == ["SELECT 1;"]


def test_each_statement_is_labelled_by_what_it_creates_or_its_opening_comment() -> None:
    """The progress bar's label: the first line without IF NOT EXISTS or OR REPLACE, a DO block's comment."""
    labels = [schema.label(piece) for piece in schema.statements(schema.schema_sql())]
    assert labels[:4] == ["the enum types and their casts from text", "delivery_log kind, outcome to enums (a rewrite)",
                          "unpartitioned tables renamed to *_legacy", "CREATE TABLE outbox_event"]
    assert {"CREATE TABLE delivery_log", "CREATE INDEX delivery_log_event ON delivery_log",
            "ALTER TABLE outbox_event ADD COLUMN traceparent text", "CREATE VIEW delivery_state",
            "CREATE FUNCTION outbox_refuse_change", "CREATE UNLOGGED TABLE endpoint_flow",
            "the *_legacy tables attached as partitions"} <= set(labels)
    assert not [label for label in labels if label.startswith("DO") or len(label) > 80]
