"""A clock moved by hand, for stepping through retry schedules and leases without waiting.

``Worker(settings, clock=...)`` passes it to every statement that schedules or
expires, so a test, the fault suite or a script can jump to the moment the
next attempt is due instead of sleeping until then.
"""

from datetime import UTC, datetime, timedelta


class FakeClock:
    """Starts a second ahead of real time (so nothing is due early by accident) unless given ``start``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now
