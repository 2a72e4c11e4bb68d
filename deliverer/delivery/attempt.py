"""One attempt: sign and POST one claimed delivery, and decide what happens next.

Nothing here touches the database: the caller records the ``Result`` (the worker
in batches, a test event at once). A receiver's behaviour never raises: every
answer, timeout or network error is an outcome, and the retry schedule (with the
receiver's Retry-After, within bounds) decides when the next attempt is due.
"""

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from deliverer.delivery import send, sign
from deliverer.delivery.claim import Claimed, Clock
from deliverer.delivery.schedule import RETRY_AFTER_CAP, honour_retry_after, retry_delay
from deliverer.facts import ErrorClass, Outcome
from deliverer.ops.metrics import METRICS, outcome_class
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
        self.sending: set[uuid.UUID] = set()  # the request may have reached the receiver
        self._http: send.Client | None = None

    async def __aenter__(self) -> "Attempter":
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
        client_certificate = None
        if extra:
            headers |= extra  # registration refuses the names signing writes
        if credentials is not None and credentials.authorization is not None:
            headers["Authorization"] = credentials.authorization
        elif credentials is not None and credentials.certificate is not None and credentials.key is not None:
            client_certificate = (credentials.certificate, credentials.key)
        assert self._http is not None, "use the Attempter as an async context manager"
        self.sending.add(claimed.delivery_id)
        outcome = await self._http.post(claimed.url, body, headers, timeout=self.settings.http_timeout,
                                        client_certificate=client_certificate)
        self.sending.discard(claimed.delivery_id)  # left in place only when a shutdown cuts the send off
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
        return Result(claimed, outcome, self.now(), None if last else 0.0, abandoned=True)

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
        if outcome.succeeded:
            log.debug("delivered", **fields)
        elif retry_after is None:
            log.warning("delivery failed", error_class=outcome.error_class, error=outcome.error_message, **fields)
        else:
            log.info("attempt failed", error_class=outcome.error_class, error=outcome.error_message,
                     retry_in_s=retry_after, **fields)
