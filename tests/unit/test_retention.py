"""Retention without a database: partition ranges, cutoff durations, and maintenance that outlives an outage.

Partitions in a real database are tested in tests/integration/test_retention.py; the `deliverer retention`
command, a running deliverer and the CronJob in tests/system/test_retention.py.
"""

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from deliverer.storage import partitions
from tests.support import aeventually, settings_for
from tests.support.partitions import DAY


def test_uncovered_fills_the_gaps_between_existing_partitions() -> None:
    """Ranges an existing partition covers (a legacy one from MINVALUE too) are skipped; gaps split at day bounds."""
    day = datetime(2025, 1, 1, tzinfo=UTC)
    existing = [(None, day + timedelta(days=1, hours=12)), (day + 3 * DAY, day + 4 * DAY)]
    assert partitions.uncovered(existing, day, day + 6 * DAY) == [
        (day + timedelta(days=1, hours=12), day + 2 * DAY), (day + 2 * DAY, day + 3 * DAY),
        (day + 4 * DAY, day + 5 * DAY), (day + 5 * DAY, day + 6 * DAY)]
    assert partitions.partition_name("outbox_event", day + timedelta(days=1, hours=12)) == "outbox_event_p20250102_1200"


async def test_periodic_maintenance_survives_an_unreachable_database() -> None:
    """Database errors are counted and retried on the next round; the task keeps running until cancelled."""
    settings = settings_for("postgresql://postgres@127.0.0.1:1/nowhere")

    def errors() -> float:
        return REGISTRY.get_sample_value("deliverer_db_errors_total", {"operation": "partitions"}) or 0

    before = errors()
    task = asyncio.create_task(partitions.maintain(settings, interval=0.05))

    def two_rounds_failed() -> bool:
        assert not task.done(), "the maintenance task stopped at a database error"
        return errors() >= before + 2
    await aeventually(two_rounds_failed, "two failed rounds of maintenance, each counted")
    assert not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert errors() >= before + 2


@pytest.mark.parametrize("text", ["30", "thirty", "30 days", "1.5d", "-1d", "0d", "30s", "d", "", "36501d",
                                  "99999999999999m"])
def test_durations_that_are_not_a_count_of_days_hours_or_minutes_are_refused(text: str) -> None:
    """Anything but a positive whole number followed by d, h or m is an error that shows the expected form."""
    with pytest.raises(ValueError, match="expected a duration like 30d, 12h or 90m"):
        partitions.parse_duration(text)


def test_durations_in_days_hours_and_minutes() -> None:
    """30d, 12h and 90m mean what they say."""
    assert [partitions.parse_duration(t) for t in ("30d", "12h", "90m")] == [
        timedelta(days=30), timedelta(hours=12), timedelta(minutes=90)]
