"""Registering webhook endpoints.

An endpoint is where one org wants its events: an HTTPS URL, the event types it
subscribes to (all of them when none are given) and the secret its requests are
signed with, and its limits (``max_in_flight``, ``rate_limit``; None: the deployment's
settings), and whether it delivers in order (``ordering``: ``fifo`` sends the events of
one ordering key one at a time, in publish order). Endpoints of the operator's org
(``outbox.catalog.OPERATOR_ORG``) may also subscribe to the operator event types; no
other org can. New secrets follow the Standard Webhooks format: ``whsec_`` and the
base64 of 32 random bytes. An existing secret can be imported instead, so customers
moving from another sender keep theirs.

An endpoint may add custom headers and authentication (basic, bearer or a client
certificate) to its requests (``deliverer.registry.request_options``). Secrets,
header values and credentials are stored sealed (``deliverer.security.sealing``) and
never read back for display; ``reseal_secrets`` seals them again after a key
rotation. ``Target`` is an endpoint as sending to it needs it.
"""

import asyncio
import base64
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from deliverer.registry import request_options
from deliverer.registry.errors import EndpointError as EndpointError  # where callers have long found it
from deliverer.registry.queries import QUERIES
from deliverer.security import sealing, ssrf
from outbox.catalog import EVENT_TYPES, OPERATOR_EVENT_TYPES, OPERATOR_ORG
from outbox.ids import iso

MAX_URL_LENGTH = 2048
MAX_ENDPOINTS_PER_ORG = 100
# An endpoint's own limits may not exceed these: beyond them one customer's setting
# would take a large share of every deliverer's sends (DELIVERER_MAX_IN_FLIGHT, 200
# a process) or ask more of the queue than it drains.
MAX_IN_FLIGHT_CEILING = 1000
MAX_RATE_LIMIT = 10_000.0
MAX_DESCRIPTION = 1000
ROTATION_GRACE_SECONDS = 24 * 3600
SECRET_BYTES = 32


@dataclass(frozen=True)
class Endpoint:
    id: str
    org_id: str
    url: str
    event_types: list[str] | None
    description: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    disabled_reason: str | None = None  # why it was disabled automatically (410 Gone, failing for days)
    max_in_flight: int | None = None  # None: DELIVERER_ENDPOINT_MAX_IN_FLIGHT
    rate_limit: float | None = None  # deliveries a second; None: DELIVERER_ENDPOINT_RATE_LIMIT
    header_names: list[str] | None = None  # of its custom headers; their values are never read back
    auth_type: str | None = None  # basic, bearer or mtls; the credentials are never read back
    ordering: str = "none"  # fifo: one request at a time per ordering key, in publish order
    secret: str | None = None  # only filled in right after creation or rotation

    def as_json(self) -> dict[str, Any]:
        out = {
            "id": self.id, "org_id": self.org_id, "url": self.url,
            "events": self.event_types or ["*"], "description": self.description,
            "enabled": self.enabled, "disabled_reason": self.disabled_reason,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "max_in_flight": self.max_in_flight, "rate_limit": self.rate_limit,
            "header_names": self.header_names or [],
            "auth": None if self.auth_type is None else {"type": self.auth_type},
            "ordering": self.ordering,
        }
        if self.secret is not None:
            out["secret"] = self.secret
        return out


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def new_endpoint_id() -> str:
    return "ep_" + secrets.token_hex(12)


def check_secret(secret: str) -> str:
    if not isinstance(secret, str) or not 16 <= len(secret) <= 512 or not secret.isprintable() or " " in secret:
        raise EndpointError(
            "an imported secret must be 16 to 512 printable characters without spaces; "
            "leave it out to have a new whsec_ secret generated", "secret")
    return secret


_INSECURE_HINT = "set DELIVERER_ALLOW_INSECURE_URLS=1 (development only) to allow it"


def check_url(url: str, *, allow_insecure: bool, allowed: Sequence[ssrf.Network] | None = None) -> str:
    """Return the URL if it may be registered, else raise EndpointError saying why.

    ``allowed``: non-public networks that may still be targeted (Settings.networks); None means
    what development mode alone implies (see ssrf.allowed_networks).
    """
    parts = _url_parts(url)
    if not allow_insecure and parts.scheme != "https":
        raise EndpointError(f"url {url!r} must use https://; plain http:// is refused: {_INSECURE_HINT}", "url")
    if allowed is None:
        allowed = ssrf.allowed_networks("", allow_insecure=allow_insecure)
    _check_host(url, parts.hostname or "", allowed)
    return url


def _url_parts(url: str) -> SplitResult:
    """The parts of an absolute http(s) URL with a host and nothing a webhook must not carry."""
    if not isinstance(url, str) or not url:
        raise EndpointError("url is required, e.g. https://example.com/webhooks/docextract", "url")
    if len(url) > MAX_URL_LENGTH:
        raise EndpointError(f"url is {len(url)} characters; the limit is {MAX_URL_LENGTH}", "url")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise EndpointError(f"url {url!r} is not a valid URL: {exc}", "url") from None
    if parts.scheme not in ("https", "http") or not host:
        raise EndpointError(f"url {url!r} must be an absolute https:// URL with a host name", "url")
    if parts.username is not None or parts.password is not None:
        raise EndpointError("url must not contain a user name or password; authenticate with the signature", "url")
    if parts.fragment:
        raise EndpointError("url must not contain a #fragment", "url")
    return parts


def _check_host(url: str, host: str, allowed: Sequence[ssrf.Network]) -> None:
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        host = "127.0.0.1"
    try:
        ssrf.check_name(host, allowed)
    except ssrf.SsrfBlocked as exc:
        raise EndpointError(
            f"url {url!r} points at a loopback or private address, which a webhook must not target "
            f"({str(exc).removeprefix('refused to connect: ')}); {_INSECURE_HINT}, or list the network in "
            "DELIVERER_ALLOWED_NETWORKS", "url") from None


def check_event_types(event_types: Iterable[str] | None, *, operator: bool = False) -> list[str] | None:
    """The event types as stored (None: all); ``operator``: the endpoint is in OPERATOR_ORG."""
    if event_types is None:
        return None
    known = (*EVENT_TYPES, *OPERATOR_EVENT_TYPES) if operator else EVENT_TYPES
    chosen = [t.strip() for t in event_types if t.strip()]
    if not operator and set(chosen) & set(OPERATOR_EVENT_TYPES):
        raise EndpointError(
            f"{', '.join(sorted(set(chosen) & set(OPERATOR_EVENT_TYPES)))}: operator event types go only to "
            f"endpoints of the operator org {OPERATOR_ORG}", "events")
    unknown = sorted(set(chosen) - {*known, "*"})
    if unknown:
        raise EndpointError(
            f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(known)}, or * for all", "events")
    if not chosen or "*" in chosen:
        return None
    return sorted(set(chosen), key=known.index)


def check_max_in_flight(value: Any) -> int | None:
    """Requests the endpoint may have open at once across every deliverer; None: the deployment's default.
    A whole number may come as 5.0: JSON does not tell the two apart."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IN_FLIGHT_CEILING:
        raise EndpointError(f"max_in_flight must be a whole number from 1 to {MAX_IN_FLIGHT_CEILING} (requests "
                            "open at once), or null for the deployment's default", "max_in_flight")
    return value


ORDERINGS = ("none", "fifo")


def check_ordering(value: Any) -> str:
    if value not in ORDERINGS:
        raise EndpointError(f"ordering must be \"none\" (deliveries in parallel, as they come) or \"fifo\" "
                            f"(one at a time per ordering key, in publish order), got {value!r}", "ordering")
    return str(value)


def check_rate_limit(value: Any) -> float | None:
    """Deliveries a second the endpoint may get; None: the deployment's default. NaN fails the comparison too."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_RATE_LIMIT:
        raise EndpointError(f"rate_limit must be a number of deliveries per second above 0 and at most "
                            f"{MAX_RATE_LIMIT:g}, or null for the deployment's default", "rate_limit")
    return float(value)


_AS_ENDPOINT = class_row(Endpoint)  # the queries return exactly Endpoint's columns, secret aside


def _one(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> Endpoint | None:
    return conn.cursor(row_factory=_AS_ENDPOINT).execute(QUERIES[query], params).fetchone()


async def _one_async(conn: psycopg.AsyncConnection[Any], query: str, params: dict[str, Any]) -> Endpoint | None:
    cur = await conn.cursor(row_factory=_AS_ENDPOINT).execute(QUERIES[query], params)
    return await cur.fetchone()


def _check_org(org_id: str) -> None:
    if not isinstance(org_id, str) or not org_id or len(org_id) > 255:
        raise EndpointError("org_id must be a non-empty string of at most 255 characters", "org_id")


def check_description(description: str) -> str:
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise EndpointError(f"description must be a string of at most {MAX_DESCRIPTION} characters", "description")
    return description


@dataclass(frozen=True)
class RequestOptions:
    """What the endpoint adds to every request, as given: custom headers and auth (None: none)."""

    headers: Any = None
    auth: Any = None

    def checked(self) -> dict[str, Any]:
        """The insert's parameters, sealed: the database never sees a header value or credential in the clear."""
        return {**_sealed_headers(self.headers), **_sealed_auth(self.auth)}


def _sealed_headers(headers: Any) -> dict[str, Any]:
    sealed = request_options.seal_headers(request_options.check_headers(headers))
    return {"headers": None if sealed is None else Jsonb(sealed)}


def _sealed_auth(auth: Any) -> dict[str, Any]:
    checked = request_options.check_auth(auth)
    return {"auth_type": None if checked is None else checked["type"], "auth": request_options.seal_auth(checked)}


@dataclass(frozen=True)
class Limits:
    """An endpoint's own limits as given; None is the deployment's default."""

    max_in_flight: Any = None
    rate_limit: Any = None

    def checked(self) -> dict[str, Any]:
        return {"max_in_flight": check_max_in_flight(self.max_in_flight),
                "rate_limit": check_rate_limit(self.rate_limit)}


def _new_endpoint_params(org_id: str, url: str, event_types: Iterable[str] | None, secret: str | None,
                         description: str, limits: Limits | None, allow_insecure: bool,
                         allowed: Sequence[ssrf.Network] | None, options: RequestOptions | None,
                         ordering: str) -> dict[str, Any]:
    _check_org(org_id)
    return {**(options or RequestOptions()).checked(),
        "id": new_endpoint_id(), "org_id": org_id,
        "url": check_url(url, allow_insecure=allow_insecure, allowed=allowed),
        "plain_secret": new_secret() if secret is None else check_secret(secret),
        "event_types": check_event_types(event_types, operator=org_id == OPERATOR_ORG),
        "description": check_description(description),
        "max_endpoints": MAX_ENDPOINTS_PER_ORG, **(limits or Limits()).checked(),
        "ordering": check_ordering(ordering),
    }


def _sealed(params: dict[str, Any]) -> dict[str, Any]:
    """The insert's parameters, with the secret sealed: the database never sees it in the clear."""
    return {k: v for k, v in params.items() if k != "plain_secret"} | {"secret": sealing.seal(params["plain_secret"])}


def _too_many(org_id: str) -> EndpointError:
    # Reported on url: the endpoint as a whole, which the request names by its URL.
    return EndpointError(f"org {org_id} already has {MAX_ENDPOINTS_PER_ORG} endpoints, the most allowed; "
                         "delete one it no longer needs first", "url")


def add(conn: psycopg.Connection, *, org_id: str, url: str, event_types: Iterable[str] | None = None,
        secret: str | None = None, description: str = "", limits: Limits | None = None, allow_insecure: bool = False,
        allowed: Sequence[ssrf.Network] | None = None, options: RequestOptions | None = None,
        ordering: str = "none") -> Endpoint:
    """Register an endpoint; the returned Endpoint carries the secret (shown once).

    ``allow_insecure`` and ``allowed`` are the URL rules of :func:`check_url`."""
    params = _new_endpoint_params(org_id, url, event_types, secret, description, limits, allow_insecure, allowed,
                                  options, ordering)
    endpoint = _one(conn, "insert_endpoint", _sealed(params))
    if endpoint is None:
        raise _too_many(org_id)
    return replace(endpoint, secret=params["plain_secret"])


async def add_async(conn: psycopg.AsyncConnection[Any], *, org_id: str, url: str,
                    event_types: Iterable[str] | None = None, secret: str | None = None,
                    description: str = "", limits: Limits | None = None, allow_insecure: bool = False,
                    allowed: Sequence[ssrf.Network] | None = None,
                    options: RequestOptions | None = None, ordering: str = "none") -> Endpoint:
    """:func:`add` on an async connection."""
    # Checking the URL may resolve its host name: not on the event loop.
    params = await asyncio.to_thread(_new_endpoint_params, org_id, url, event_types, secret, description, limits,
                                     allow_insecure, allowed, options, ordering)
    endpoint = await _one_async(conn, "insert_endpoint", _sealed(params))
    if endpoint is None:
        raise _too_many(org_id)
    return replace(endpoint, secret=params["plain_secret"])


def list_all(conn: psycopg.Connection, org_id: str | None = None) -> list[Endpoint]:
    return conn.cursor(row_factory=_AS_ENDPOINT).execute(QUERIES["list_endpoints"], {"org_id": org_id}).fetchall()


async def list_async(conn: psycopg.AsyncConnection[Any], org_id: str) -> list[Endpoint]:
    cur = await conn.cursor(row_factory=_AS_ENDPOINT).execute(QUERIES["list_endpoints"], {"org_id": org_id})
    return await cur.fetchall()


def set_enabled(conn: psycopg.Connection, endpoint_id: str, enabled: bool) -> Endpoint:
    endpoint = _one(conn, "set_endpoint_enabled", {"id": endpoint_id, "enabled": enabled})
    if endpoint is None:
        raise EndpointError(f"no endpoint {endpoint_id!r}; `deliverer endpoints list` shows the ids", "endpoint_id")
    return endpoint


async def get(conn: psycopg.AsyncConnection[Any], endpoint_id: str, org_id: str | None) -> Endpoint | None:
    return await _one_async(conn, "get_endpoint", {"id": endpoint_id, "org_id": org_id})


_UNSET: Any = object()


def _settable(name: str, value: Any, check: Callable[[Any], Any]) -> dict[str, Any]:
    """A field whose None is a value of its own: set_<name> says whether it changes."""
    return {f"set_{name}": value is not _UNSET, name: None if value is _UNSET else check(value)}


def _settable_options(headers: Any, auth: Any) -> dict[str, Any]:
    """Headers and auth are replaced whole when given (None: none); sealed like the insert's."""
    return {"set_headers": headers is not _UNSET, "set_auth": auth is not _UNSET,
            **(_sealed_headers(None) if headers is _UNSET else _sealed_headers(headers)),
            **(_sealed_auth(None) if auth is _UNSET else _sealed_auth(auth))}


async def update(conn: psycopg.AsyncConnection[Any], endpoint_id: str, org_id: str | None, *,
                 url: str | None = None, event_types: Any = _UNSET, description: str | None = None,
                 enabled: bool | None = None, max_in_flight: Any = _UNSET, rate_limit: Any = _UNSET,
                 headers: Any = _UNSET, auth: Any = _UNSET, ordering: Any = _UNSET,
                 allow_insecure: bool = False, allowed: Sequence[ssrf.Network] | None = None) -> Endpoint | None:
    """Change the given fields; None keeps a field as it is, except event_types, the limits, headers and auth,
    whose None means every type, the default or none: those change whenever they are given (headers and auth
    as a whole). A None org_id: any org's."""
    owner = org_id
    if event_types is not _UNSET and owner is None:  # which types it may have depends on its org
        found = await get(conn, endpoint_id, None)
        owner = None if found is None else found.org_id

    def types(value: Any) -> list[str] | None:
        return check_event_types(value, operator=owner == OPERATOR_ORG)

    return await _one_async(conn, "update_endpoint", {
        **_settable_options(headers, auth),
        "id": endpoint_id, "org_id": org_id,
        "url": None if url is None else await asyncio.to_thread(check_url, url, allow_insecure=allow_insecure,
                                                                allowed=allowed),
        **_settable("event_types", event_types, types),
        **_settable("max_in_flight", max_in_flight, check_max_in_flight),
        **_settable("rate_limit", rate_limit, check_rate_limit),
        "description": None if description is None else check_description(description),
        "ordering": None if ordering is _UNSET else check_ordering(ordering),
        "enabled": enabled,
    })


@dataclass(frozen=True)
class Pacing:
    """An endpoint's live limits state, shared by every deliverer: requests open now, how many it may
    have open (the adaptive allowance, within its max_in_flight) and the end of a Retry-After pause."""

    in_flight: int = 0
    allowance: int = 0
    paused_until: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "allowance": self.allowance,
                "paused_until": None if self.paused_until is None else iso(self.paused_until)}


async def pacing(conn: psycopg.AsyncConnection[Any], endpoint_id: str, default_max_in_flight: int) -> Pacing:
    """Zeros for an endpoint nothing has been claimed for yet: it has no state."""
    cur = await conn.cursor(row_factory=class_row(Pacing)).execute(
        QUERIES["endpoint_pacing"], {"id": endpoint_id, "default_max_in_flight": default_max_in_flight})
    return await cur.fetchone() or Pacing()


async def delete(conn: psycopg.AsyncConnection[Any], endpoint_id: str, org_id: str) -> bool:
    cur = await conn.execute(QUERIES["delete_endpoint"], {"id": endpoint_id, "org_id": org_id})
    return await cur.fetchone() is not None


async def rotate_secret(conn: psycopg.AsyncConnection[Any], endpoint_id: str, org_id: str,
                        grace_seconds: float = ROTATION_GRACE_SECONDS) -> Endpoint | None:
    """Replace the secret; the old one stays valid (signed for too) for ``grace_seconds``."""
    secret = new_secret()
    endpoint = await _one_async(conn, "rotate_endpoint_secret", {"id": endpoint_id, "org_id": org_id,
                                                                 "secret": sealing.seal(secret),
                                                                 "grace_seconds": grace_seconds})
    return None if endpoint is None else replace(endpoint, secret=secret)


@dataclass(frozen=True)
class _StoredSecrets:
    id: str
    secret: str
    previous_secret: str | None
    headers: dict[str, str] | None
    auth: str | None


def reseal_secrets(conn: psycopg.Connection) -> int:
    """Seal every endpoint's secrets again with the first key of DELIVERER_SECRET_KEYS, in one
    transaction (after a key rotation); returns the number of endpoints."""
    with conn.transaction():
        stored = conn.cursor(row_factory=class_row(_StoredSecrets)).execute(QUERIES["endpoint_secrets"]).fetchall()
        for row in stored:
            conn.execute(QUERIES["store_sealed_secrets"], {
                "id": row.id, "secret": sealing.reseal(row.secret),
                "previous_secret": None if row.previous_secret is None else sealing.reseal(row.previous_secret),
                "headers": None if row.headers is None else Jsonb(request_options.reseal_headers(row.headers)),
                "auth": None if row.auth is None else sealing.reseal(row.auth),
            })
    return len(stored)


class Target(NamedTuple):
    """An endpoint as sending to it needs it: where, its sealed secrets (the previous one while its grace
    lasts), whether it is enabled, and its sealed custom headers and auth. A tuple in the columns' order."""

    id: str
    org_id: str
    url: str
    secret: str
    previous_secret: str | None
    enabled: bool
    headers: dict[str, str] | None = None
    auth: str | None = None


async def target_by_url(conn: psycopg.AsyncConnection[Any], org_id: str | None, url: str) -> Target | None:
    """The endpoint registered at ``url`` (of ``org_id``, unless None), preferring an enabled one."""
    cur = await conn.cursor(row_factory=class_row(Target)).execute(
        QUERIES["find_endpoint_by_url"], {"org_id": org_id, "url": url})
    return await cur.fetchone()


async def target_by_id(conn: psycopg.AsyncConnection[Any], org_id: str | None, endpoint_id: str) -> Target | None:
    cur = await conn.cursor(row_factory=class_row(Target)).execute(
        QUERIES["endpoint_for_test"], {"org_id": org_id, "id": endpoint_id})
    return await cur.fetchone()
