"""The typed event builders' events, published: what receivers will get is the customer docs' example.

The builders themselves are tested without a database in tests/unit/test_events.py.
"""

import json

import psycopg

import outbox
from tests.support.contract import SEED_PAYLOADS, build_from_seed, seed


class TestSeedRoundTrip:
    def test_published_body_is_the_docs_example(self, dsn: str, db: psycopg.Connection) -> None:
        """What publish stores for receivers, from the builders' events, parses back to the docs' examples."""
        built = [build_from_seed(t) for t in SEED_PAYLOADS]
        with psycopg.connect(dsn) as conn:
            ids = outbox.publish_many(conn, built)
        rows = dict(db.execute("SELECT 'evt_' || replace(id::text, '-', ''), body FROM outbox_event").fetchall())
        assert [json.loads(rows[event_id]) for event_id in ids] == [seed(t) for t in SEED_PAYLOADS]
