"""Signatures and headers of a webhook request.

``X-DocExtract-Signature`` is the hex HMAC-SHA256 of the exact body bytes, keyed
with the endpoint secret's UTF-8 bytes (the whole string, ``whsec_`` prefix
included): that is what the receivers in the customer docs compute.
"""

import hashlib
import hmac

from deliverer import __version__

USER_AGENT = f"DocExtract-Webhooks/{__version__}"


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, received: str | None, secret: str) -> bool:
    """Constant-time check of an ``X-DocExtract-Signature`` value, for receivers written in Python."""
    if not received:
        return False
    return hmac.compare_digest(received.encode("ascii", "replace"), signature(secret, body).encode("ascii"))


def headers(*, secret: str, body: bytes, event_id: str, event_type: str, delivery_id: str,
            attempt: int, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-DocExtract-Signature": signature(secret, body),
        "X-DocExtract-Event-Id": event_id,
        "X-DocExtract-Event-Type": event_type,
        "X-DocExtract-Delivery-Id": delivery_id,
        "X-DocExtract-Delivery-Attempt": str(attempt),
        "X-DocExtract-Timestamp": str(timestamp),
    }
