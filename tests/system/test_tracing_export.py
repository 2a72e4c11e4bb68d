"""`deliverer run` exports spans when OTEL_TRACES_EXPORTER asks, and refuses an exporter it does not have."""

import json
from pathlib import Path

import psycopg
from opentelemetry.sdk.trace import TracerProvider

import outbox
from tests.support import Receiver, add_endpoint, webhook_test
from tests.support.processes import WorkerProcess, deliverer


def spans_printed(log: str) -> list[dict]:
    """The console exporter's spans: indented JSON objects among the JSON log lines."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (start := log.find('{\n    "name"', at)) >= 0:
        span, at = decoder.raw_decode(log, start)
        spans.append(span)
    return spans


async def test_a_worker_exports_its_attempts_spans_to_the_console(
        dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """OTEL_TRACES_EXPORTER=console: the attempt of a traced event is printed as a child of the publisher's
    span, under OTEL_SERVICE_NAME, flushed as the worker stops."""
    add_endpoint(db, receiver, "/hook")
    with TracerProvider().get_tracer("app").start_as_current_span("publish") as span, psycopg.connect(dsn) as conn:
        outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
        conn.commit()
    worker = WorkerProcess(dsn, "traced", tmp_path, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="webhooks")
    await worker.start()
    try:
        await receiver.wait_for(1)
    finally:
        assert await worker.stop() == 0
    producer = span.get_span_context()
    [attempt] = [s for s in spans_printed(worker.log()) if s["name"] == "webhook.attempt"]
    assert attempt["context"]["trace_id"] == f"0x{producer.trace_id:032x}"
    assert attempt["parent_id"] == f"0x{producer.span_id:016x}"
    assert attempt["resource"]["attributes"]["service.name"] == "webhooks"
    assert receiver.requests[0].headers["traceparent"].split("-")[2] == attempt["context"]["span_id"][2:]


def test_an_unknown_exporter_is_refused_in_one_line() -> None:
    """OTEL_TRACES_EXPORTER names otlp, console or none; anything else stops the command with status 2."""
    result = deliverer("postgresql://nowhere/db", "run", OTEL_TRACES_EXPORTER="zipkin")
    assert result.returncode == 2
    assert result.stderr.strip() == "deliverer: error: OTEL_TRACES_EXPORTER must be none, otlp or console"
