"""Tracing set up from the standard OTEL_* variables, and the log lines written inside a trace."""

import json

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from deliverer import settings
from deliverer.ops import logsetup, tracing


def test_json_log_lines_carry_the_current_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """Inside a span a JSON line has its trace_id and span_id; outside any, neither."""
    logsetup.configure("info", "json")
    log = structlog.get_logger("test")
    with TracerProvider().get_tracer("test").start_as_current_span("attempt") as span:
        log.info("inside")
    log.info("outside")
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    context = span.get_span_context()
    assert (inside["trace_id"], inside["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert "trace_id" not in outside and "span_id" not in outside


def test_export_is_off_unless_otel_traces_exporter_names_one() -> None:
    """The default exports nothing; otlp and console are accepted, anything else is refused by name."""
    assert settings.from_env({}).traces_exporter == "none"
    assert settings.from_env({"OTEL_TRACES_EXPORTER": "console"}).traces_exporter == "console"
    with pytest.raises(settings.ConfigError, match="OTEL_TRACES_EXPORTER"):
        settings.from_env({"OTEL_TRACES_EXPORTER": "jaeger"})
    tracing.configure("none", "deliverer")
    assert tracing.TRACING.tracer is None


def test_console_export_prints_each_span_as_the_deliverers_service(capsys: pytest.CaptureFixture[str]) -> None:
    """OTEL_TRACES_EXPORTER=console prints each span, as the deliverer's service when OTEL_SERVICE_NAME
    names none."""
    try:
        tracing.configure("console", "deliverer", environ={})
        span = tracing.start_attempt(None, None, link=None, attributes={"webhook.attempt": 1})
        tracing.finish_attempt(span, succeeded=False, attributes={"error.type": "timeout"})
        tracing.shutdown()
        printed = json.loads(capsys.readouterr().out)
        assert printed["name"] == tracing.ATTEMPT
        assert printed["attributes"] == {"webhook.attempt": 1, "error.type": "timeout"}
        assert printed["status"]["status_code"] == "ERROR"
        assert printed["resource"]["attributes"]["service.name"] == "deliverer"
    finally:
        tracing.use(None)
    assert tracing.TRACING.tracer is None


def test_otlp_over_grpc_is_refused_by_name() -> None:
    """The otel extra exports OTLP over HTTP; asking for gRPC says so rather than failing later."""
    with pytest.raises(ValueError, match="http/protobuf"):
        tracing.configure("otlp", "deliverer", environ={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert tracing.TRACING.tracer is None


def test_without_a_tracer_an_attempt_continues_the_publishers_span_unchanged() -> None:
    """No exporter: the attempt's span is the publisher's own, not recording, and the header names it."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    span = tracing.start_attempt(traceparent, "vendor=1", link=None, attributes={})
    assert not span.is_recording()
    assert tracing.headers(span) == {"traceparent": traceparent, "tracestate": "vendor=1"}
    assert trace.get_current_span() is trace.INVALID_SPAN
