"""One attempt: sign and POST one claimed delivery, and decide what happens next.

Nothing here touches the database: the caller records the ``Result`` (the worker
in batches, a test event at once). A receiver's behaviour never raises: every
answer, timeout or network error is an outcome, and the retry schedule (with the
receiver's Retry-After, within bounds) decides when the next attempt is due.

An attempt continues the trace its event was published in, if any
(``deliverer.ops.tracing``): the request carries a ``traceparent``, and with an
exporter the attempt is a span.
"""

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import trace

from deliverer.delivery import send, sign
from deliverer.delivery.aiohttp_send import AiohttpClient
from deliverer.delivery.claim import Claimed, Clock
from deliverer.delivery.schedule import RETRY_AFTER_CAP, honour_retry_after, retry_delay
from deliverer.facts import ErrorClass, Outcome
from deliverer.ops import tracing
from deliverer.ops.metrics import METRICS, outcome_class
from deliverer.ops.tracing import TRACING
from deliverer.registry import request_options
from deliverer.security import sealing
from deliverer.settings import Settings
from outbox.ids import delivery_public_id, event_public_id

log = structlog.get_logger("deliverer.worker")


@dataclass(frozen=True)
class Result:
    claimed: Claimed
    outcome: send.Outcome
    started_at: datetime
    retry_after: float | None  # None: the delivery is finished (delivered or failed)
    abandoned: bool = False  # handed back at shutdown: the outcome is unknown, the delivery is due again
    span: trace.SpanContext | None = None  # the attempt's span, when exported: the outcome's write links to it

    @property
    def pause(self) -> float | None:
        """Seconds the whole endpoint should rest: a 429 or 503's Retry-After, within the schedule's cap."""
        if self.abandoned or self.outcome.http_status not in (429, 503) or self.outcome.retry_after is None:
            return None
        return min(self.outcome.retry_after, RETRY_AFTER_CAP)

    @property
    def log_outcome(self) -> Outcome:
        if self.abandoned:
            return Outcome.UNKNOWN
        return Outcome.SUCCEEDED if self.outcome.succeeded else Outcome.FAILED


class Attempter:
    """Sends claimed deliveries over one keep-alive HTTP client. Use as an async context manager."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock
        # The request may have reached the receiver: when it started, for a send cut off at shutdown.
        self.sending: dict[uuid.UUID, datetime] = {}
        self._http: send.Client | AiohttpClient | None = None

    async def __aenter__(self) -> "Attempter":
        if self.settings.http_client == "aiohttp":
            self._http = AiohttpClient(allowed=self.settings.networks, max_idle=self.settings.max_in_flight)
        else:
            self._http = send.Client(allowed=self.settings.networks, max_idle=self.settings.max_in_flight,
                                     proxy=self.settings.proxy)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    def now(self) -> datetime:
        return self.clock() if self.clock else datetime.now(UTC)

    async def attempt(self, claimed: Claimed) -> Result:
        """Send one claimed delivery and decide what happens next; never raises for the receiver's sake."""
        if claimed.expired_lease_of is not None:
            return self.expired(claimed)
        if TRACING.tracer is None:
            # Not exported: the publisher's context, if any, goes to the receiver as it was stored.
            return await self._attempt(claimed, tracing.forwarded(claimed.traceparent, claimed.tracestate))
        span = tracing.start_attempt(claimed.traceparent, claimed.tracestate, link=claimed.claim_span, attributes={
            "webhook.endpoint_id": claimed.endpoint_id, "webhook.event_type": claimed.event_type,
            "webhook.event_id": event_public_id(claimed.event_id),
            "webhook.delivery_id": delivery_public_id(claimed.delivery_id),
            "webhook.series": claimed.series, "webhook.attempt": claimed.attempt,
        })
        result: Result | None = None
        exported = span.is_recording()  # until it ends
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                result = await self._attempt(claimed, tracing.headers(span))
        finally:
            # Cut off at shutdown (cancelled), the span ends too, as an attempt with no outcome.
            tracing.finish_attempt(span, succeeded=result is not None and result.outcome.succeeded,
                                   attributes=_span_outcome(result))
        return replace(result, span=span.get_span_context()) if exported else result

    async def _attempt(self, claimed: Claimed, trace_headers: dict[str, str] | None) -> Result:
        started_at = self.now()
        if not claimed.endpoint_enabled:
            outcome = send.Outcome(
                False, 0.0, error_class=ErrorClass.ENDPOINT_DISABLED,
                error_message=f"endpoint {claimed.endpoint_id} is disabled; nothing was sent",
            )
            self._count(claimed, outcome, None)
            return Result(claimed, outcome, started_at, None)
        try:
            secret = sealing.unseal(claimed.secret)
            previous = () if claimed.previous_secret is None else (sealing.unseal(claimed.previous_secret),)
            extra = request_options.unseal_headers(claimed.headers)
            credentials = None if claimed.auth is None else request_options.credentials(claimed.auth)
        except sealing.SealingError as exc:
            # Nothing is sent unsigned: the attempt fails and is retried on the schedule once keys are fixed.
            outcome = send.Outcome(False, 0.0, error_class=ErrorClass.OTHER, error_message=str(exc))
            return self._finish(claimed, outcome, started_at, retry_delay(claimed.attempt, self.settings.retry_delays))
        body = claimed.body.encode("utf-8")
        headers = sign.headers(
            secret=secret, previous_secrets=previous, body=body,
            event_id=event_public_id(claimed.event_id),
            event_type=claimed.event_type, delivery_id=delivery_public_id(claimed.delivery_id),
            attempt=claimed.attempt, timestamp=int(started_at.timestamp()),
        )
        if trace_headers is not None:
            headers |= trace_headers
        client_certificate = None
        if extra:
            headers |= extra  # registration refuses the names signing writes
        if credentials is not None and credentials.authorization is not None:
            headers["Authorization"] = credentials.authorization
        elif credentials is not None and credentials.certificate is not None and credentials.key is not None:
            client_certificate = (credentials.certificate, credentials.key)
        assert self._http is not None, "use the Attempter as an async context manager"
        self.sending[claimed.delivery_id] = started_at
        outcome = await self._http.post(claimed.url, body, headers, timeout=self.settings.http_timeout,
                                        client_certificate=client_certificate)
        del self.sending[claimed.delivery_id]  # left in place only when a shutdown cuts the send off
        if outcome.http_status == 410:
            # Gone: the receiver asks us to stop, so this is final and the endpoint gets disabled.
            return self._finish(claimed, outcome, started_at, None)
        if outcome.succeeded:
            return self._finish(claimed, outcome, started_at, None)
        return self._retry(claimed, outcome, started_at)

    def _retry(self, claimed: Claimed, outcome: send.Outcome, started_at: datetime) -> Result:
        """A failed attempt: when the next one is due, honouring the receiver's Retry-After within bounds."""
        scheduled = retry_delay(claimed.attempt, self.settings.retry_delays, jitter=self.settings.retry_jitter)
        retry_after = honour_retry_after(scheduled, outcome.retry_after)
        if outcome.retry_after is not None:
            # The log has no column for it: the message says what the receiver asked and what was done.
            asked = f"Retry-After {outcome.retry_after:g} s"
            if retry_after is None:
                note = f"{asked} ignored: that was the last attempt"
            elif outcome.retry_after > RETRY_AFTER_CAP:
                note = f"{asked} capped at {RETRY_AFTER_CAP:g} s"
            elif scheduled is not None and outcome.retry_after > scheduled:
                note = f"{asked} honoured"
            else:
                note = f"{asked} shorter than the schedule's {scheduled:g} s"
            outcome = replace(outcome, error_message=f"{outcome.error_message}; {note}")
        return self._finish(claimed, outcome, started_at, retry_after)

    def _finish(self, claimed: Claimed, outcome: send.Outcome, started_at: datetime,
                retry_after: float | None) -> Result:
        self._log(claimed, outcome, retry_after)
        self._count(claimed, outcome, retry_after)
        return Result(claimed, outcome, started_at, retry_after)

    def expired(self, claimed: Claimed) -> Result:
        """The result for a last attempt whose worker's lease ran out with no outcome: abandoned, and the
        delivery failed. Written like any outcome, so delivery.exhausted goes out in the same transaction."""
        outcome = send.Outcome(False, 0.0, error_class=ErrorClass.LEASE_EXPIRED,
                               error_message=f"worker {claimed.expired_lease_of} did not report an outcome before "
                                             "its lease expired")
        self._log(claimed, outcome, None)
        METRICS.deliveries_failed.inc()  # not an attempt of its own: that one was counted where it was made
        return Result(claimed, outcome, claimed.expired_lease_at or self.now(), None, abandoned=True)

    def hand_back(self, claimed: Claimed, *, sent: bool, no_room: bool = False) -> Result:
        """The result for a send cut off at shutdown, or never started because its endpoint had no room
        while the lease lasted (``no_room``): abandoned, due again now (or failed if it was the last).

        It counts as an attempt, like a lease that ran out: the receiver may have
        got the request, and a request that kills workers must not loop forever.
        """
        if no_room:
            message = "not sent: the endpoint had no room for it while its lease lasted"
            error_class = ErrorClass.NO_ROOM
        else:
            message = ("cut off by shutdown mid-send; the receiver may have it" if sent
                       else "handed back at shutdown before it was sent")
            error_class = ErrorClass.SHUTDOWN
        outcome = send.Outcome(False, 0.0, error_class=error_class, error_message=message)
        last = claimed.attempt >= self.settings.max_attempts
        started_at = self.sending.pop(claimed.delivery_id, None) or self.now()
        return Result(claimed, outcome, started_at, None if last else 0.0, abandoned=True)

    def _count(self, claimed: Claimed, outcome: send.Outcome, retry_after: float | None) -> None:
        METRICS.attempts.labels(outcome_class(outcome.error_class)).inc()
        METRICS.attempt_duration.observe(outcome.duration_ms / 1000)
        if outcome.succeeded:
            METRICS.end_to_end.observe(max(0.0, (self.now() - claimed.created_at).total_seconds()))
        elif retry_after is None:
            METRICS.deliveries_failed.inc()
        else:
            METRICS.retries_scheduled.inc()

    def _log(self, claimed: Claimed, outcome: send.Outcome, retry_after: float | None) -> None:
        # Inside the attempt's span, when there is one: the lines carry its trace_id and span_id.
        # Successes are in the delivery log and the metrics; a line each would be most of
        # the log volume (and of the worker's CPU) at thousands of deliveries a second.
        if outcome.succeeded and not log.is_enabled_for(logging.DEBUG):
            return
        fields = {
            "event_id": event_public_id(claimed.event_id),
            "delivery_id": delivery_public_id(claimed.delivery_id),
            "endpoint_id": claimed.endpoint_id,
            "event_type": claimed.event_type,
            "attempt": claimed.attempt,
            "status": outcome.http_status,
            "duration_ms": round(outcome.duration_ms, 2),
        }
        if claimed.traceparent is not None and TRACING.tracer is None:
            fields |= tracing.log_fields(claimed.traceparent)  # exported, the current span's are logged instead
        if outcome.succeeded:
            log.debug("delivered", **fields)
        elif retry_after is None:
            log.warning("delivery failed", error_class=outcome.error_class, error=outcome.error_message, **fields)
        else:
            log.info("attempt failed", error_class=outcome.error_class, error=outcome.error_message,
                     retry_in_s=retry_after, **fields)


def _span_outcome(result: Result | None) -> dict[str, Any]:
    """The attributes an attempt's span ends with."""
    if result is None:
        return {"error.type": "cancelled"}
    outcome = result.outcome
    attributes: dict[str, Any] = {"webhook.outcome": outcome_class(outcome.error_class),
                                  "webhook.duration_ms": round(outcome.duration_ms, 3)}
    if outcome.http_status is not None:
        attributes["http.response.status_code"] = outcome.http_status
    if outcome.error_class is not None:
        attributes["error.type"] = str(outcome.error_class)
    if result.retry_after is not None:
        attributes["webhook.retry_in_s"] = result.retry_after
    return attributes
