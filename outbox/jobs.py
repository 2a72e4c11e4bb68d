"""The event that ends a job: ``job.completed`` or ``job.failed``, from the job's outcome and timings.

A job ends either with a result or with an error, never both, so the outcome is
one value, a :class:`JobResult` or a :class:`JobError`, and the event type
follows from it. ``processing_time_ms`` is computed here from when processing
started and finished (it excludes the time the job waited in the queue after
``created_at``), so it always agrees with the timestamps it is sent with::

    event = outbox.jobs.job_finished(
        job_id=job.id, org_id=job.org_id, extractor_id=job.extractor_id,
        outcome=JobError("document_unreadable", "Document quality is too low to extract text",
                         "Please provide a higher quality scan or image"),
        created_at=job.created_at, started_at=job.started_at, finished_at=now, cost_credits=0,
    )
    outbox.publish_many(conn, [event])     # in the transaction that saves the job's final state
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from outbox import events
from outbox.errors import InvalidPayload
from outbox.publish import Event


@dataclass(frozen=True)
class JobResult:
    """A job that succeeded: what was extracted, and the confidence (0 to 1) of each field."""

    extracted_data: Mapping[str, Any]
    confidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobError:
    """A job that failed: a stable machine-readable ``code``, a ``message`` and an optional ``suggestion``."""

    code: str
    message: str
    suggestion: str | None = None


def _check_aware(name: str, moment: Any) -> None:
    try:
        events.format_timestamp(moment)
    except InvalidPayload as exc:
        raise InvalidPayload(f"{name}: {exc}") from None


def processing_time_ms(started_at: datetime, finished_at: datetime) -> int:
    """Milliseconds from ``started_at`` to ``finished_at``, rounded half up; both must be aware datetimes."""
    _check_aware("started_at", started_at)
    _check_aware("finished_at", finished_at)
    # In UTC: two datetimes with the same zone subtract as wall-clock times, which is
    # an hour off (or negative) across a daylight-saving change.
    started, finished = started_at.astimezone(UTC), finished_at.astimezone(UTC)
    if finished < started:
        raise InvalidPayload(f"finished_at ({finished_at.isoformat()}) is before started_at "
                             f"({started_at.isoformat()})")
    microseconds = (finished - started) // timedelta(microseconds=1)
    return (microseconds + 500) // 1000


def job_finished(*, job_id: str, org_id: str, extractor_id: str, outcome: JobResult | JobError,
                 created_at: datetime, started_at: datetime, finished_at: datetime, cost_credits: events.Number,
                 metadata: Mapping[str, Any] | None = None) -> Event:
    """``job.completed`` for a :class:`JobResult`, ``job.failed`` for a :class:`JobError`.

    ``created_at`` is when the job was submitted, ``started_at`` when processing
    began and ``finished_at`` when it ended (sent as ``completed_at`` or
    ``failed_at``); they must be in that order.
    """
    _check_aware("created_at", created_at)
    _check_aware("started_at", started_at)
    if started_at.astimezone(UTC) < created_at.astimezone(UTC):  # see processing_time_ms
        raise InvalidPayload(f"started_at ({started_at.isoformat()}) is before created_at "
                             f"({created_at.isoformat()})")
    elapsed = processing_time_ms(started_at, finished_at)
    if isinstance(outcome, JobResult):
        return events.job_completed(
            job_id=job_id, org_id=org_id, extractor_id=extractor_id, extracted_data=outcome.extracted_data,
            confidence=outcome.confidence, processing_time_ms=elapsed, cost_credits=cost_credits,
            created_at=created_at, completed_at=finished_at, metadata=metadata,
        )
    if isinstance(outcome, JobError):
        return events.job_failed(
            job_id=job_id, org_id=org_id, extractor_id=extractor_id, code=outcome.code, message=outcome.message,
            suggestion=outcome.suggestion, processing_time_ms=elapsed, cost_credits=cost_credits,
            created_at=created_at, failed_at=finished_at, metadata=metadata,
        )
    raise InvalidPayload(f"outcome must be a JobResult or a JobError, got {type(outcome).__name__}")
