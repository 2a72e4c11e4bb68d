"""When a failed delivery is tried again.

The customer contract: attempt 1 immediately, then 5 s, 30 s, 2 min, 10 min and
1 h after the previous failure; after the 6th failed attempt the delivery is
failed and never retried automatically.
"""

import random
from collections.abc import Sequence

from deliverer.settings import SEED_DELAYS


def max_attempts(delays: Sequence[float] = SEED_DELAYS) -> int:
    return len(delays) + 1


def retry_delay(attempt: int, delays: Sequence[float] = SEED_DELAYS, *, jitter: float = 0.0,
                rng: random.Random | None = None) -> float | None:
    """Seconds to wait after failed attempt number ``attempt`` (1-based), or None when it was the last.

    ``jitter`` spreads each delay uniformly over ±jitter of itself, so that many
    deliveries failing together do not retry together; it is off by default
    because the contract promises exact delays.
    """
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, got {attempt}")
    if attempt > len(delays):
        return None
    delay = float(delays[attempt - 1])
    if jitter:
        delay *= 1 + (rng or random).uniform(-jitter, jitter)
    return delay


RETRY_AFTER_CAP = 3600.0
"""The longest wait a receiver's Retry-After can impose: one hour, the contract's longest delay."""


def honour_retry_after(delay: float | None, retry_after: float | None,
                       cap: float = RETRY_AFTER_CAP) -> float | None:
    """The wait before the next attempt when a 429/503 carried Retry-After.

    The contract's schedule is a floor: Retry-After can only push the next
    attempt later, to at most ``cap`` seconds, never sooner and never past the
    last attempt (``delay`` None stays None).
    """
    if delay is None or retry_after is None:
        return delay
    return max(delay, min(retry_after, cap))
