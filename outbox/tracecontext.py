"""The caller's trace context, captured as an event is published.

``publish`` stores the W3C ``traceparent`` (and ``tracestate``, when there is one)
of the span current in the caller with the event, in the same statement: every
attempt to deliver it, retries and replays included, continues that trace, and a
receiver that uses OpenTelemetry joins it through the ``traceparent`` header.

Only the OpenTelemetry API is needed here, never its SDK: an application that
does not trace has no current span, and capturing costs one context lookup
(about half a microsecond) that finds none.
"""

from opentelemetry import trace


def current() -> tuple[str | None, str | None]:
    """``(traceparent, tracestate)`` of the caller's current span; ``(None, None)`` outside any trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    return traceparent, context.trace_state.to_header() or None
