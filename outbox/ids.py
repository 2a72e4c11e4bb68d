"""Public identifiers.

Event ids are UUIDv7: the leading 48 bits are the Unix time in milliseconds, so
ids sort by creation time and the events table can later be range-partitioned on
them. The public form is ``evt_`` followed by the 32 hex digits.

Within one process ids are also strictly increasing, as RFC 9562 (section 6.2,
method 1) suggests and Python 3.14's ``uuid.uuid7`` does: the 42 bits after the
version hold a counter that starts at a random value each millisecond and goes
up by one for every further id in the same millisecond (or while the clock
stands still or steps back), and the last 32 bits are random. Two threads racing
may get the same counter, never the same id but for those 32 random bits.
"""

import os
import time
import uuid
from datetime import UTC, datetime

EVENT_PREFIX = "evt_"
DELIVERY_PREFIX = "dlv_"

_VERSION_AND_VARIANT = 0x7 << 76 | 0x2 << 62
_COUNTER_MAX = (1 << 42) - 1
_last_ms = -1
_last_counter = 0


def _compose(ms: int, counter: int, tail: int) -> int:
    """48 bits of time, version 7, 12 + 30 bits of counter, the variant, 32 random bits."""
    return (ms & 0xFFFF_FFFF_FFFF) << 80 | (counter >> 30) << 64 | (counter & 0x3FFF_FFFF) << 32 | tail \
        | _VERSION_AND_VARIANT


def _new_event_int() -> int:
    global _last_ms, _last_counter
    ms = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10))
    if ms > _last_ms:
        counter = random >> 39  # 41 bits: room to count up before the millisecond ends
    else:
        ms, counter = _last_ms, _last_counter + 1
        if counter > _COUNTER_MAX:
            ms, counter = ms + 1, random >> 39
    _last_ms, _last_counter = ms, counter
    return _compose(ms, counter, random & 0xFFFF_FFFF)


def new_event_hex() -> str:
    """A new event id as 32 hex digits (what :func:`new_event_uuid` returns, without building a UUID)."""
    return f"{_new_event_int():032x}"


def new_event_uuid(now_ms: int | None = None) -> uuid.UUID:
    """A new UUIDv7 event id; ``now_ms`` pins the time (and skips the in-process ordering)."""
    if now_ms is None:
        return uuid.UUID(int=_new_event_int())
    random = int.from_bytes(os.urandom(10))
    return uuid.UUID(int=_compose(now_ms, random >> 39, random & 0xFFFF_FFFF))


def _public(prefix: str, value: uuid.UUID) -> str:
    return prefix + value.hex


def _parse(prefix: str, kind: str, public_id: str) -> uuid.UUID:
    if not isinstance(public_id, str) or not public_id.startswith(prefix):
        raise ValueError(f"{kind} ids look like {prefix}<32 hex digits>, got {public_id!r}")
    try:
        return uuid.UUID(hex=public_id[len(prefix) :])
    except ValueError:
        raise ValueError(f"{kind} ids look like {prefix}<32 hex digits>, got {public_id!r}") from None


def event_public_id(value: uuid.UUID) -> str:
    return _public(EVENT_PREFIX, value)


def parse_event_id(public_id: str) -> uuid.UUID:
    return _parse(EVENT_PREFIX, "event", public_id)


def delivery_public_id(value: uuid.UUID) -> str:
    return _public(DELIVERY_PREFIX, value)


def parse_delivery_id(public_id: str) -> uuid.UUID:
    return _parse(DELIVERY_PREFIX, "delivery", public_id)


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z, the timestamp format of the public contract."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
