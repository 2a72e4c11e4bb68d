"""Operator events: the deliverer's news about delivery health, for the people who run it.

``endpoint.disabled``, ``endpoint.recovered`` and ``delivery.exhausted`` are
published in the transaction that writes the fact they announce (the endpoint's
new state, the delivery's last attempt), so each is published once per
transition: if that transaction rolls back, neither the fact nor the event exists,
and a second worker racing on the same endpoint finds the state already changed.
Each carries a dedupe key naming its transition as well.

They are published in ``OPERATOR_ORG`` and so go, through the ordinary fan-out, to
the endpoints the operator registers there, never to a customer's (see
``outbox.catalog``). Nothing is announced about the operator's own endpoints: a
broken operator endpoint would otherwise be sent news of its own failures, each
failing in turn.
"""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

import outbox
from deliverer.delivery.attempt import Result
from deliverer.facts import ErrorClass, FactKind
from outbox import sqlfile
from outbox.catalog import OPERATOR_ORG
from outbox.ids import delivery_public_id, event_public_id, iso

QUERIES = sqlfile.load(__package__, "operational.sql")


@dataclass(frozen=True)
class Transition:
    """An endpoint whose state changed: disabled (``reason`` says why) or recovered."""

    endpoint_id: str
    org_id: str
    url: str
    reason: str
    at: datetime
    failing_since: datetime | None


def _error(error_class: str | None, http_status: int | None, message: str | None,
           at: datetime | None) -> dict[str, Any]:
    return {"error_class": error_class, "http_status": http_status, "message": message,
            "at": None if at is None else iso(at)}


async def last_failures(conn: psycopg.AsyncConnection[Any], endpoint_ids: Sequence[str]) -> dict[str, Any]:
    """Each endpoint's most recent failed attempt as ``last_error``; None where the log holds none."""
    cur = await conn.execute(QUERIES["last_failures"], {"endpoint_ids": list(endpoint_ids)})
    return {endpoint_id: None if at is None else _error(error_class, status, message, at)
            for endpoint_id, error_class, status, message, at in await cur.fetchall()}


async def failing_endpoints(conn: psycopg.AsyncConnection[Any]) -> set[str]:
    cur = await conn.execute(QUERIES["failing_endpoints"])
    return {endpoint_id for (endpoint_id,) in await cur.fetchall()}


def _about_customers(transitions: Iterable[Transition]) -> list[Transition]:
    return [t for t in transitions if t.org_id != OPERATOR_ORG]


async def publish_transitions(conn: psycopg.AsyncConnection[Any], disabled: Iterable[Transition],
                              recovered: Iterable[Transition]) -> None:
    """Announce endpoints disabled and recovered, on ``conn`` within the transaction that changed them."""
    disabled, recovered = _about_customers(disabled), _about_customers(recovered)
    if not disabled and not recovered:
        return
    errors = await last_failures(conn, [t.endpoint_id for t in [*disabled, *recovered]])
    events = [outbox.Event("endpoint.disabled", {
        **_subject(t, errors), "disabled_at": iso(t.at),
        "failing_since": None if t.failing_since is None else iso(t.failing_since),
    }, OPERATOR_ORG, dedupe_key=f"endpoint.disabled:{t.endpoint_id}:{iso(t.at)}") for t in disabled]
    events += [outbox.Event("endpoint.recovered", {
        **_subject(t, errors), "recovered_at": iso(t.at), "failing_since": iso(t.failing_since or t.at),
    }, OPERATOR_ORG, dedupe_key=f"endpoint.recovered:{t.endpoint_id}:{iso(t.failing_since or t.at)}")
        for t in recovered]
    await outbox.apublish_many(conn, events)


def _subject(t: Transition, errors: dict[str, Any]) -> dict[str, Any]:
    return {"endpoint_id": t.endpoint_id, "org_id": t.org_id, "url": t.url, "reason": t.reason,
            "last_error": errors.get(t.endpoint_id)}


def exhausting(results: Iterable[Result]) -> list[Result]:
    """The outcomes that, if they apply, end their delivery as failed: a last attempt that failed (or was
    cut off), or a 410. A delivery turned away because its endpoint is disabled is not one: the operator
    heard of the endpoint already, and its whole backlog would follow."""
    return [r for r in results if r.retry_after is None and not r.outcome.succeeded
            and r.outcome.error_class != ErrorClass.ENDPOINT_DISABLED and r.claimed.org_id != OPERATOR_ORG]


async def publish_exhausted(conn: psycopg.AsyncConnection[Any], candidates: Sequence[Result],
                            applied: dict[uuid.UUID, FactKind]) -> None:
    """Announce the deliveries among ``candidates`` whose last outcome was written (``applied``: the fact
    each delivery's outcome became; a late result changed nothing), in the transaction that wrote it."""
    exhausted = [r for r in candidates if applied.get(r.claimed.delivery_id) in
                 (FactKind.ATTEMPT_FINISHED, FactKind.ATTEMPT_ABANDONED)]
    if not exhausted:
        return
    await outbox.apublish_many(conn, [outbox.Event("delivery.exhausted", {
        "endpoint_id": r.claimed.endpoint_id, "org_id": r.claimed.org_id, "url": r.claimed.url,
        "delivery_id": delivery_public_id(r.claimed.delivery_id), "event_id": event_public_id(r.claimed.event_id),
        "event_type": r.claimed.event_type, "attempts": r.claimed.attempt,
        "reason": _why(r), "exhausted_at": iso(r.started_at),
        "last_error": _error(r.outcome.error_class, r.outcome.http_status, r.outcome.error_message, r.started_at),
    }, OPERATOR_ORG, dedupe_key=f"delivery.exhausted:{r.claimed.delivery_id}:{r.claimed.series}")
        for r in exhausted])


def _why(result: Result) -> str:
    if result.outcome.error_class == ErrorClass.LEASE_EXPIRED:
        return (f"attempt {result.claimed.attempt}, the last one allowed, got no outcome: its worker stopped "
                "before reporting one")
    if result.outcome.http_status == 410:
        return f"attempt {result.claimed.attempt} was answered 410 Gone: nothing more is sent"
    return f"attempt {result.claimed.attempt} failed and was the last one allowed"
