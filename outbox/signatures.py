"""Webhook signatures, for the sender and for Python receivers.

Two schemes are sent on every request:

- ``X-DocExtract-Signature``: hex HMAC-SHA256 of the raw body, keyed with the
  endpoint secret's UTF-8 bytes (the whole ``whsec_…`` string). This is what
  the customer docs' Express, Flask and Go receivers compute.
- Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id`` (the
  event id), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``,
  ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the
  base64-decoded part of the ``whsec_`` secret. Several space-separated
  signatures are sent while a rotated-out secret is still valid. Signing the id
  and timestamp lets receivers reject replays older than a tolerance.

Verification is constant-time.
"""

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300  # seconds a Standard Webhooks timestamp may be off


class InvalidSignature(Exception):
    """The request was not signed with this secret, or is too old or too new."""


def docextract_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def standard_key(secret: str) -> bytes:
    """The HMAC key of Standard Webhooks: the bytes base64-encoded after ``whsec_``.

    A secret imported in another format is used as its UTF-8 bytes; receivers
    built on the standardwebhooks libraries need ``whsec_`` secrets.
    """
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except binascii.Error:
            pass
    return secret.encode("utf-8")


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(standard_key(secret), signed, hashlib.sha256).digest()).decode()


def verify_signature(body: bytes, signature: str | None, secret: str) -> bool:
    """Check ``X-DocExtract-Signature`` against the raw body."""
    if not signature:
        return False
    expected = docextract_signature(secret, body)
    return hmac.compare_digest(signature.encode("ascii", "replace"), expected.encode("ascii"))


def verify_standard(body: bytes, headers: Mapping[str, str], secrets: str | Iterable[str], *,
                    tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> None:
    """Check Standard Webhooks headers; raise InvalidSignature saying why not.

    ``secrets`` may list several (current and previous) during a rotation.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, raw_timestamp, signatures = (lowered.get(h) for h in
                                         ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and raw_timestamp and signatures):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not Unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidSignature(f"webhook-timestamp is more than {tolerance:g} s from now: a replay, or a clock off")
    candidates = {s.split(",", 1)[1] for s in signatures.split() if s.startswith("v1,")}
    for secret in [secrets] if isinstance(secrets, str) else secrets:
        expected = standard_signature(secret, msg_id, timestamp, body).split(",", 1)[1]
        if any(hmac.compare_digest(expected, c) for c in candidates):
            return
    raise InvalidSignature("no webhook-signature matches the secret")
