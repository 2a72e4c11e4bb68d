"""What an endpoint adds to every request sent to it: custom headers and authentication.

``headers`` is an object of header name → value, sent with every request. The
names the deliverer writes itself (the signatures, the ids, Content-Type, Host,
Content-Length, the Standard Webhooks headers, the W3C trace context, the
connection's own) are refused,
and so is Authorization: that is what ``auth`` is for.

``auth`` is one of ``{"type": "basic", "username", "password"}``,
``{"type": "bearer", "token"}`` or ``{"type": "mtls", "certificate", "key"}`` (PEM;
the pair is judged at registration, see ``deliverer.security.client_certificates``).

Both are sealed at rest like the signing secret, and neither is given back once
stored: a listing shows the header names and the auth type, never a value. Header
values are treated as credentials because that is what customers put in them
(``X-Api-Key``). Stored forms: headers as ``{name: sealed value}``, auth as its
type and its sealed JSON.
"""

import base64
import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deliverer.registry.errors import EndpointError
from deliverer.security import client_certificates, sealing

MAX_HEADERS = 20
MAX_HEADER_NAME = 64
MAX_HEADER_VALUE = 1024
MAX_HEADERS_TOTAL = 8 * 1024
"""Most characters of all names and values together."""
MAX_CREDENTIAL = 4096

RESERVED_HEADERS = frozenset({
    "authorization", "connection", "content-encoding", "content-length", "content-type", "expect", "host",
    "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "traceparent", "tracestate",
    "transfer-encoding", "upgrade", "user-agent",
})
RESERVED_PREFIXES = ("x-docextract-", "webhook-")
AUTH_TYPES = ("basic", "bearer", "mtls")
_AUTH_FIELDS = {"basic": ("username", "password"), "bearer": ("token",), "mtls": ("certificate", "key")}

_AUTH_SHAPES = ('auth must be {"type": "basic", "username": …, "password": …}, {"type": "bearer", "token": …} '
                'or {"type": "mtls", "certificate": PEM, "key": PEM}, or null for none')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110, 5.1)


def check_headers(headers: Any) -> dict[str, str] | None:
    """The headers if they may be sent as given (None or {}: none), else EndpointError saying why."""
    if headers is None or headers == {}:
        return None
    if not isinstance(headers, dict):
        raise EndpointError('headers must be an object of header name to value, e.g. {"X-Tenant": "acme"}',
                            "headers")
    if len(headers) > MAX_HEADERS:
        raise EndpointError(f"headers has {len(headers)} headers; the limit is {MAX_HEADERS}", "headers")
    seen: set[str] = set()
    for name, value in headers.items():
        _check_header(name, value)
        if name.lower() in seen:
            raise EndpointError(f"header {name!r} is given twice (names are case-insensitive)", "headers")
        seen.add(name.lower())
    total = sum(len(n) + len(v) for n, v in headers.items())
    if total > MAX_HEADERS_TOTAL:
        raise EndpointError(f"headers add up to {total} characters; the limit is {MAX_HEADERS_TOTAL}", "headers")
    return dict(headers)


def _check_header(name: Any, value: Any) -> None:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
        raise EndpointError(f"header name {name!r} must be 1 to {MAX_HEADER_NAME} letters, digits or !#$%&'*+.^_`|~-",
                            "headers")
    lower = name.lower()
    if lower in RESERVED_HEADERS or lower.startswith(RESERVED_PREFIXES):
        hint = "; set auth instead" if lower == "authorization" else ""
        raise EndpointError(f"header {name!r} is reserved: the deliverer sets it itself{hint}", "headers")
    if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
        raise EndpointError(f"header {name!r} must have a string value of at most {MAX_HEADER_VALUE} characters",
                            "headers")
    if value != value.strip() or any(c in "\r\n\x7f" or (c < " " and c != "\t") for c in value):
        raise EndpointError(f"header {name!r} has control characters or surrounding spaces in its value", "headers")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise EndpointError(f"header {name!r} has characters outside Latin-1 in its value; "
                            "encode them (e.g. percent-encoding)", "headers") from None


def check_auth(auth: Any, *, now: datetime | None = None) -> dict[str, str] | None:
    """The auth object if it can be used as given (None: no auth), else EndpointError saying why."""
    if auth is None:
        return None
    if not isinstance(auth, dict) or auth.get("type") not in AUTH_TYPES:
        raise EndpointError(_AUTH_SHAPES, "auth")
    kind = auth["type"]
    wanted = {"type", *_AUTH_FIELDS[kind]}
    if set(auth) != wanted or not all(isinstance(auth[f], str) for f in _AUTH_FIELDS[kind]):
        fields = ", ".join(_AUTH_FIELDS[kind])
        raise EndpointError(f"auth of type {kind} has exactly the string fields {fields}", "auth")
    if kind == "basic":
        _check_basic(auth["username"], auth["password"])
    elif kind == "bearer":
        _check_credential("the bearer token", auth["token"], spaces=False)
    else:
        try:
            client_certificates.check(auth["certificate"], auth["key"], now=now)
        except client_certificates.CertificateError as exc:
            raise EndpointError(f"auth of type mtls refused: {exc}", "auth") from None
    return {f: auth[f] for f in sorted(wanted)}


def _check_basic(username: str, password: str) -> None:
    if not username or ":" in username:
        raise EndpointError("auth of type basic needs a username without ':' (RFC 7617)", "auth")
    _check_credential("the username", username, spaces=True)
    if password:
        _check_credential("the password", password, spaces=True)


def _check_credential(what: str, value: str, *, spaces: bool) -> None:
    if not value or len(value) > MAX_CREDENTIAL or not value.isprintable() or (not spaces and " " in value):
        rule = "printable characters" if spaces else "printable characters without spaces"
        raise EndpointError(f"auth: {what} must be 1 to {MAX_CREDENTIAL} {rule}", "auth")


# Stored forms -----------------------------------------------------------------


def seal_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    return None if headers is None else {name: sealing.seal(value) for name, value in headers.items()}


def seal_auth(auth: dict[str, str] | None) -> str | None:
    return None if auth is None else sealing.seal(json.dumps(auth, separators=(",", ":")))


def reseal_headers(stored: dict[str, str] | None) -> dict[str, str] | None:
    return None if stored is None else {name: sealing.reseal(value) for name, value in stored.items()}


def unseal_headers(stored: dict[str, str] | None) -> dict[str, str]:
    """The headers to send; raises SealingError when a value was sealed with a key that is gone."""
    return {} if stored is None else {name: sealing.unseal(value) for name, value in stored.items()}


@dataclass(frozen=True)
class Credentials:
    """What ``auth`` means on the wire: an Authorization header, or a client certificate and key (PEM)."""

    authorization: str | None = None
    certificate: str | None = None
    key: str | None = None

    def __repr__(self) -> str:  # never a credential in a traceback or a log line
        kind = "authorization" if self.authorization else "client certificate" if self.certificate else "none"
        return f"Credentials(<{kind}>)"


@functools.lru_cache(maxsize=4096)
def credentials(stored: str) -> Credentials:
    """The sealed auth as sent; raises SealingError when it was sealed with a key that is gone."""
    auth = json.loads(sealing.unseal(stored))
    if auth["type"] == "basic":
        pair = f"{auth['username']}:{auth['password']}".encode()
        return Credentials(authorization="Basic " + base64.b64encode(pair).decode("ascii"))
    if auth["type"] == "bearer":
        return Credentials(authorization="Bearer " + auth["token"])
    return Credentials(certificate=auth["certificate"], key=auth["key"])
