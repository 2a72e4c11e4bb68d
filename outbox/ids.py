"""Public identifiers.

Event ids are UUIDv7: the leading 48 bits are the Unix time in milliseconds, so
ids sort by creation time and the events table can later be range-partitioned on
them. The public form is ``evt_`` followed by the 32 hex digits.
"""

import os
import time
import uuid
from datetime import UTC, datetime

EVENT_PREFIX = "evt_"
DELIVERY_PREFIX = "dlv_"


def new_event_uuid(now_ms: int | None = None) -> uuid.UUID:
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


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
