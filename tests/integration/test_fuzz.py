"""Hostile input to publish, generated with hypothesis: it writes one event or raises a clear error.

The API fuzzed from its OpenAPI document, against a real server process, is in tests/system/test_fuzz.py.
"""

import json

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import outbox
from outbox.catalog import EVENT_TYPES
from tests.support import SEED_EXAMPLES, count

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    event_type=st.sampled_from([*EVENT_TYPES, "job.unknown", ""]),
    base=st.sampled_from([None, *SEED_EXAMPLES]),
    overrides=st.dictionaries(st.sampled_from(["id", "org_id", "status", "processing_time_ms", "timestamp",
                                               "current_balance", "jobs_queued", "extracted_data", "message"]),
                              json_values, max_size=3),
    org_id=st.sampled_from(["org_a", "", None, "org\x00a", "x" * 300]),
)
def test_publish_either_writes_or_raises_a_clear_error(dsn: str, event_type: str, base: str | None,
                                                       overrides: dict, org_id: str | None) -> None:
    """Any input either publishes one event or raises an OutboxError, leaving the transaction usable."""
    data = {**(SEED_EXAMPLES[base]() if base else {}), **overrides}
    with psycopg.connect(dsn) as conn:
        before = count(conn, "outbox_event")
        try:
            event_id = outbox.publish(conn, event_type, data, org_id=org_id)  # type: ignore[arg-type]
        except outbox.OutboxError as exc:
            assert str(exc)
            assert count(conn, "outbox_event") == before, "partial write"
        else:
            stored = conn.execute("SELECT body FROM outbox_event WHERE id = %s",
                                  [outbox.parse_event_id(event_id)]).fetchone()
            assert json.loads(stored[0])["data"] == json.loads(json.dumps(data))
        conn.execute("SELECT 1")  # the transaction is still usable
        conn.rollback()
