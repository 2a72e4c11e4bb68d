"""Tracing: each attempt continues the publisher's trace; claims and outcome writes link to the attempts.

Propagation is always on. An event published inside a trace carries its W3C
context (``outbox.tracecontext``), and every attempt to deliver it (retries,
replays and test events too) sends a ``traceparent`` in that trace, so a receiver
that uses OpenTelemetry joins it.

Export is opt-in: with the ``otel`` extra installed (the SDK and the OTLP
exporter) and ``OTEL_TRACES_EXPORTER=otlp`` (or ``console``), :func:`configure`
gives ``TRACING`` a tracer, configured by the other standard ``OTEL_*``
variables. Then every attempt is a span (a child of the publisher's, or a trace of
its own for an event published outside any), and so is every claim and every
batch of outcomes written, linked to the attempts they carry.

Without a tracer nothing is made or parsed: the attempt forwards the
publisher's own ``traceparent`` and ``tracestate`` as stored (what OpenTelemetry
does without an SDK), at the cost of a test and a small dict.
"""

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

EXPORTERS = ("none", "otlp", "console")
"""What OTEL_TRACES_EXPORTER may name; none (the default) exports nothing."""

ATTEMPT, CLAIM, RECORD = "webhook.attempt", "deliverer.claim", "deliverer.record"
"""The span names."""

_W3C = TraceContextTextMapPropagator()
_ROOT = otel_context.Context()  # claims, outcome writes and untraced events start traces of their own


class Tracing:
    """The deliverer's tracer: None until :func:`configure` or :func:`use` gives it one."""

    def __init__(self) -> None:
        self.tracer: trace.Tracer | None = None
        self.provider: Any = None  # the SDK's TracerProvider, flushed by shutdown()


TRACING = Tracing()


def use(provider: trace.TracerProvider | None) -> None:
    """Export through ``provider`` (an SDK ``TracerProvider``), or stop with None. Tests give theirs here."""
    TRACING.provider = provider
    TRACING.tracer = None if provider is None else provider.get_tracer("deliverer")


def configure(exporter: str, service: str, environ: Mapping[str, str] = os.environ) -> None:
    """Export spans as ``exporter`` (one of EXPORTERS) says, the SDK reading the other OTEL_* variables."""
    if exporter == "none":
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        raise ModuleNotFoundError(f"OTEL_TRACES_EXPORTER={exporter} needs the otel extra: pip install "
                                  "'docextract-webhooks[deliverer,otel]'", name="opentelemetry.sdk") from None
    # sys.stdout as it is now: the exporter's default is the one of when it was imported.
    span_exporter: SpanExporter = ConsoleSpanExporter(out=sys.stdout) if exporter == "console" else _otlp(environ)
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER and the span limits
    provider.add_span_processor(BatchSpanProcessor(span_exporter))  # OTEL_BSP_*
    use(provider)


def _otlp(environ: Mapping[str, str]) -> Any:
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""))
    if protocol not in ("", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: the deliverer exports OTLP as http/protobuf "
                         "(a collector's port 4318)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT


def shutdown() -> None:
    """Export what is buffered; the process is ending."""
    if TRACING.provider is not None:
        TRACING.provider.shutdown()
        use(None)


def forwarded(traceparent: str | None, tracestate: str | None) -> dict[str, str] | None:
    """The headers of an attempt that is not exported: the publisher's context as it was stored (made by
    ``outbox.tracecontext``, so well-formed), or None for an event published outside a trace."""
    if traceparent is None:
        return None
    return {"traceparent": traceparent} if tracestate is None else {"traceparent": traceparent,
                                                                    "tracestate": tracestate}


def log_fields(traceparent: str) -> dict[str, str]:
    """``trace_id`` and ``span_id`` of a traceparent header (version 00: fixed offsets)."""
    return {"trace_id": traceparent[3:35], "span_id": traceparent[36:52]}


def start_attempt(traceparent: str | None, tracestate: str | None, *, link: trace.SpanContext | None,
                  attributes: Mapping[str, Any]) -> trace.Span:
    """The attempt's span, started now: a child of the publisher's span, or a trace of its own for an event
    published outside any. Without a tracer (see :func:`forwarded`), the publisher's span itself, not recording."""
    parent = _W3C.extract({"traceparent": traceparent, "tracestate": tracestate or ""}) if traceparent else _ROOT
    tracer = TRACING.tracer
    if tracer is None:
        return trace.get_current_span(parent)
    links = (trace.Link(link),) if link is not None else ()
    return tracer.start_span(ATTEMPT, parent, kind=trace.SpanKind.CLIENT, attributes=attributes, links=links)


def headers(span: trace.Span) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) naming ``span``, for the request."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, trace.set_span_in_context(span, _ROOT))
    return carrier


def finish_attempt(span: trace.Span, *, succeeded: bool, attributes: Mapping[str, Any]) -> None:
    """End the attempt's span with its outcome (a span that is not recording has nothing to end)."""
    if not span.is_recording():
        return
    span.set_attributes(attributes)
    if not succeeded:
        span.set_status(trace.StatusCode.ERROR, str(attributes.get("error.type", "")))
    span.end()


def start_linked(name: str, spans: Iterable[trace.SpanContext | None], **attributes: Any) -> trace.Span | None:
    """A span of its own trace, started now, for a claim or a batch of outcomes written, linked to
    ``spans`` (the attempts); None when there is no tracer. Attributes are named ``deliverer.<keyword>``.
    The caller ends it (:func:`end`)."""
    tracer = TRACING.tracer
    if tracer is None:
        return None
    links = [trace.Link(s) for s in spans if s is not None]
    return tracer.start_span(name, _ROOT, links=links, attributes=_prefixed(attributes))


def end(span: trace.Span | None) -> None:
    if span is not None:
        span.end()


def _prefixed(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {f"deliverer.{key}": value for key, value in attributes.items()}


@contextlib.contextmanager
def continued(headers: Mapping[str, str]) -> Iterator[None]:
    """Run the block in the trace an incoming request names with its ``traceparent``, if it has one:
    what it publishes (a test event) continues the caller's trace."""
    if "traceparent" not in headers:
        yield
        return
    token = otel_context.attach(_W3C.extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def log_ids(_logger: Any, _method: str, event_dict: Any) -> Any:
    """A structlog processor: ``trace_id`` and ``span_id`` of the current span, when there is one."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", f"{span_context.trace_id:032x}")
        event_dict.setdefault("span_id", f"{span_context.span_id:016x}")
    return event_dict
