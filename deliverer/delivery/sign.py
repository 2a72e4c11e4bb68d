"""Headers of a webhook request: both signature schemes (see outbox.signatures) and the ids.

``webhook-id`` is the event id, the same on every attempt and replay, so
receivers can deduplicate on it; ``webhook-timestamp`` is when the attempt
started, signed, so receivers can refuse replays of old requests.
"""

from collections.abc import Iterable

from deliverer import __version__
from outbox.signatures import docextract_signature, standard_signature

USER_AGENT = f"DocExtract-Webhooks/{__version__}"


def headers(*, secret: str, body: bytes, event_id: str, event_type: str, delivery_id: str,
            attempt: int, timestamp: int, previous_secrets: Iterable[str] = ()) -> dict[str, str]:
    """``previous_secrets``: rotated-out secrets still in their grace period, signed for too."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-DocExtract-Signature": docextract_signature(secret, body),
        "X-DocExtract-Event-Id": event_id,
        "X-DocExtract-Event-Type": event_type,
        "X-DocExtract-Delivery-Id": delivery_id,
        "X-DocExtract-Delivery-Attempt": str(attempt),
        "X-DocExtract-Timestamp": str(timestamp),
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(standard_signature(s, event_id, timestamp, body)
                                      for s in (secret, *previous_secrets)),
    }
