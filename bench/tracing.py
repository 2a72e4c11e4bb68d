"""What tracing costs an attempt, measured in a loop over the code each attempt runs: ``python -m bench.tracing``.

No database, no network: the figures are the tracing work alone (deliverer.ops.tracing,
outbox.tracecontext), with export off and with it on (an SDK TracerProvider and a
BatchSpanProcessor whose exporter drops the spans), in microseconds per call, the
best of five runs. docs/tracing.md quotes them.
"""

import timeit
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from deliverer.ops import tracing
from outbox import tracecontext

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STARTED = {"webhook.endpoint_id": "ep_x", "webhook.event_type": "job.completed", "webhook.event_id": "evt_x",
           "webhook.delivery_id": "dlv_x", "webhook.series": 1, "webhook.attempt": 1}
ENDED = {"webhook.outcome": "success", "webhook.duration_ms": 1.0, "http.response.status_code": 200}


class Dropped(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def not_exported(traceparent: str | None) -> Any:
    """What Attempter.attempt does without a tracer."""
    return tracing.forwarded(traceparent, None) if tracing.TRACING.tracer is None else None


def exported(traceparent: str | None) -> dict[str, str]:
    """What Attempter.attempt does with one: a span, current while sending, its header, its end."""
    span = tracing.start_attempt(traceparent, None, link=None, attributes=STARTED)
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        headers = tracing.headers(span)
    tracing.finish_attempt(span, succeeded=True, attributes=ENDED)
    return headers


def batch_span() -> None:
    tracing.end(tracing.start_linked(tracing.RECORD, (), outcomes=100))


def microseconds(call: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main() -> None:
    rows = [("publish outside a trace: finding no context", microseconds(tracecontext.current, 200_000)),
            ("attempt, export off, event untraced", microseconds(lambda: not_exported(None), 200_000)),
            ("attempt, export off, event traced: header forwarded", microseconds(lambda: not_exported(TRACEPARENT),
                                                                                  200_000)),
            ("claim or outcome batch, export off", microseconds(batch_span, 200_000))]
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=100_000))
    tracing.use(provider)
    try:
        rows += [("attempt, export on, event traced: a child span", microseconds(lambda: exported(TRACEPARENT),
                                                                                  20_000)),
                 ("attempt, export on, event untraced: a root span", microseconds(lambda: exported(None), 20_000)),
                 ("claim or outcome batch, export on: a span", microseconds(batch_span, 20_000))]
    finally:
        tracing.use(None)
        provider.shutdown()
    for what, cost in rows:
        print(f"{what:<55} {cost:8.2f} µs")


if __name__ == "__main__":
    main()
