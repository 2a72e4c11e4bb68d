"""outbox.publish before it reaches a database: what it refuses, the ids it makes and the bodies it writes.

Publishing in real transactions, with every kind of connection, is in tests/integration/test_publish.py.
"""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy
from hypothesis import given, settings
from hypothesis import strategies as st

import outbox
from outbox import ids
from outbox.publish import serialize
from tests.support import webhook_test


class TestValidation:
    def test_unsupported_connection_is_refused(self) -> None:
        """Anything that is not a psycopg or SQLAlchemy connection gets a clear error."""
        with pytest.raises(outbox.UnsupportedConnection, match="pass a psycopg Connection"):
            outbox.publish(object(), "webhook.test", webhook_test(), org_id="org_a")

    def test_sqlalchemy_with_another_driver_is_refused(self) -> None:
        """An engine that is not PostgreSQL through psycopg is refused before any SQL runs."""
        engine = sqlalchemy.create_engine("sqlite://")
        with engine.connect() as conn, pytest.raises(outbox.UnsupportedConnection, match="postgresql\\+psycopg"):
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")


class TestIdsAndBodies:
    def test_event_ids_are_uuidv7_and_strictly_increasing_within_a_process(self) -> None:
        """Ids carry version 7, the RFC variant and the current millisecond, and never go backwards."""
        made = [ids.new_event_hex() for _ in range(10_000)]
        assert made == sorted(made)
        assert len(set(made)) == len(made)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        for value in (uuid.UUID(made[0]), uuid.UUID(made[-1]), ids.new_event_uuid()):
            assert value.version == 7
            assert value.variant == uuid.RFC_4122
            assert abs((value.int >> 80) - now_ms) < 60_000
        assert ids.new_event_uuid(now_ms=1_700_000_000_000).int >> 80 == 1_700_000_000_000

    @settings(max_examples=200)
    @given(data=st.dictionaries(st.text(), st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)))
    def test_bodies_are_exactly_what_json_dumps_writes(self, data: dict[str, Any]) -> None:
        """The body keeps key order, compact separators and unescaped non-ASCII: json.dumps's exact bytes."""
        expected = json.dumps({"event": "webhook.test", "data": data}, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
        try:
            body = serialize("webhook.test", data)
        except outbox.InvalidPayload:
            with pytest.raises(UnicodeEncodeError):
                expected.encode("utf-8")
        else:
            assert body == expected
