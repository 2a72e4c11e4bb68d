"""One trace from the producer's transaction to the receiver: across a failed attempt, its retry and a replay.

Spans are exported to an in-memory exporter; the receiver is a real one on
loopback that does what a receiver using OpenTelemetry does: it continues the
trace named by the ``traceparent`` it receives, with a span of its own.
"""

import uuid
from collections.abc import Iterator

import psycopg
import pytest
import structlog
import structlog.testing
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import outbox
from deliverer.delivery.worker import Worker
from deliverer.history import ping, replay
from deliverer.ops import tracing
from deliverer.registry import endpoints
from tests.support import FakeClock, Receiver, add_endpoint, settings_for, webhook_test

W3C = TraceContextTextMapPropagator()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The deliverer's spans (and the producer's and receiver's, on the same provider), kept in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use(provider)
    yield memory
    tracing.use(None)
    provider.shutdown()


def producer_tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    """The application's own tracing, apart from the deliverer's."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider.get_tracer("the-application"), memory


def traced_receiver(receiver: Receiver, path: str, tracer: trace.Tracer, *, failures: int) -> None:
    """``path`` continues the trace of each request in a span of its own, failing the first ``failures``."""
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        with tracer.start_as_current_span("receive webhook", W3C.extract(dict(request.headers))):
            return web.Response(status=500 if n <= failures else 200)
    receiver.behave(path, behaviour)


def header_ids(traceparent: str) -> tuple[int, int]:
    """(trace id, parent span id) of a traceparent header."""
    _version, trace_id, span_id, _flags = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def publish_in_span(dsn: str, tracer: trace.Tracer) -> tuple[str, trace.SpanContext]:
    with tracer.start_as_current_span("complete job") as span, psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
        conn.commit()
    return event_id, span.get_span_context()


async def replay_all(dsn: str, db: psycopg.Connection) -> None:
    delivery_ids = [d for (d,) in db.execute("SELECT DISTINCT delivery_id FROM delivery_log")]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        assert len(await replay.replay(conn, delivery_ids, org_id=None, actor="test")) == len(delivery_ids)


class TestExported:
    async def test_a_retry_and_a_replay_continue_the_producers_trace_to_the_receiver(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock,
            exporter: InMemorySpanExporter) -> None:
        """Each attempt is a child span of the publisher's; the receiver's spans are children of the attempts."""
        endpoint = add_endpoint(db, receiver, "/hook")
        tracer = trace.get_tracer("the-receiver", tracer_provider=tracing.TRACING.provider)
        traced_receiver(receiver, "/hook", tracer, failures=1)
        event_id, producer = publish_in_span(dsn, tracer)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            assert [r.outcome.http_status for r in await worker.run_once()] == [500]
            clock.advance(5)  # the contract's first retry delay
            assert [r.outcome.http_status for r in await worker.run_once()] == [200]
            await replay_all(dsn, db)
            assert [r.outcome.http_status for r in await worker.run_once()] == [200]

        spans = exporter.get_finished_spans()
        attempts = named(spans, tracing.ATTEMPT)
        assert [(a.attributes["webhook.series"], a.attributes["webhook.attempt"]) for a in attempts] == [
            (1, 1), (1, 2), (2, 1)]
        for attempt in attempts:
            assert attempt.context.trace_id == producer.trace_id
            assert attempt.parent is not None and attempt.parent.span_id == producer.span_id
            assert attempt.kind is trace.SpanKind.CLIENT
            assert attempt.attributes["webhook.endpoint_id"] == endpoint.id
            assert attempt.attributes["webhook.event_type"] == "webhook.test"
            assert attempt.attributes["webhook.event_id"] == event_id
            assert attempt.attributes["webhook.duration_ms"] >= 0
        assert [a.attributes["http.response.status_code"] for a in attempts] == [500, 200, 200]
        assert [a.attributes.get("error.type") for a in attempts] == ["http_5xx", None, None]
        assert [a.attributes["webhook.outcome"] for a in attempts] == ["http_5xx", "success", "success"]
        assert attempts[0].attributes["webhook.retry_in_s"] == 5
        assert [a.status.status_code for a in attempts] == [trace.StatusCode.ERROR, trace.StatusCode.UNSET,
                                                            trace.StatusCode.UNSET]

        # What the receiver got: a traceparent naming the attempt, which its own span continues.
        headers = [r.headers["traceparent"] for r in receiver.requests]
        assert [header_ids(h) for h in headers] == [(producer.trace_id, a.context.span_id) for a in attempts]
        received = named(spans, "receive webhook")
        assert [(s.context.trace_id, s.parent.span_id if s.parent else None) for s in received] == [
            (producer.trace_id, a.context.span_id) for a in attempts]

        # Claims and outcome writes are traces of their own, linked with the attempts they carry.
        claims = {s.context.span_id: s for s in named(spans, tracing.CLAIM)}
        for attempt in attempts:
            [link] = attempt.links
            assert link.context.span_id in claims
            assert claims[link.context.span_id].attributes["deliverer.claimed"] == 1
        records = named(spans, tracing.RECORD)
        recorded = {link.context.span_id for s in records for link in s.links}
        assert {a.context.span_id for a in attempts} <= recorded
        assert all(s.parent is None and s.context.trace_id != producer.trace_id for s in [*claims.values(), *records])

    async def test_an_event_published_outside_a_trace_starts_one_at_its_attempt(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, exporter: InMemorySpanExporter) -> None:
        """No trace context is stored; the attempt's span is a root, and the request names it."""
        add_endpoint(db, receiver, "/hook")
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        assert db.execute("SELECT traceparent, tracestate FROM outbox_event").fetchall() == [(None, None)]
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        [attempt] = named(exporter.get_finished_spans(), tracing.ATTEMPT)
        assert attempt.parent is None
        [request] = receiver.requests
        assert header_ids(request.headers["traceparent"]) == (attempt.context.trace_id, attempt.context.span_id)

    async def test_a_test_event_continues_its_callers_trace(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, exporter: InMemorySpanExporter) -> None:
        """ping.send stores the current trace context like publish does: its attempt is a child of the caller's span."""
        endpoint = add_endpoint(db, receiver, "/hook")
        tracer, _ = producer_tracer()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn, \
                ping.Sender(settings_for(dsn), "api-test") as sender:
            target = await endpoints.target_by_url(conn, "org_a", endpoint.url)
            assert target is not None
            with tracer.start_as_current_span("send a test event") as span:
                assert (await ping.send(conn, sender, target))["delivered"] is True
        caller = span.get_span_context()
        spans = exporter.get_finished_spans()
        [attempt] = named(spans, tracing.ATTEMPT)
        assert attempt.parent is not None and attempt.parent.span_id == caller.span_id
        assert attempt.context.trace_id == caller.trace_id
        assert [link.context.span_id for s in named(spans, tracing.RECORD) for link in s.links] == [
            attempt.context.span_id]
        [request] = receiver.requests
        assert header_ids(request.headers["traceparent"]) == (caller.trace_id, attempt.context.span_id)


class TestNotExported:
    async def test_the_publishers_traceparent_goes_to_the_receiver_on_every_attempt(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """With no exporter the deliverer makes no span: each attempt, retry and replay forwards the
        publisher's own traceparent and tracestate, as OpenTelemetry does without an SDK."""
        assert tracing.TRACING.tracer is None
        add_endpoint(db, receiver, "/hook")
        receiver.fail_first("/hook", 1)
        tracer, _ = producer_tracer()
        parent = trace.SpanContext(uuid.uuid4().int >> 64, uuid.uuid4().int >> 64, is_remote=True,
                                   trace_flags=trace.TraceFlags(1),
                                   trace_state=trace.TraceState([("vendor", "value")]))
        with tracer.start_as_current_span("complete job", trace.set_span_in_context(trace.NonRecordingSpan(parent))) \
                as span, psycopg.connect(dsn) as conn:
            outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a")])
            conn.commit()
        producer = span.get_span_context()
        expected = f"00-{producer.trace_id:032x}-{producer.span_id:016x}-01"
        assert db.execute("SELECT traceparent, tracestate FROM outbox_event").fetchall() == [
            (expected, "vendor=value")]
        async with Worker(settings_for(dsn), clock=clock) as worker:
            with structlog.testing.capture_logs() as logged:
                await worker.run_once()
            clock.advance(5)
            await worker.run_once()
            await replay_all(dsn, db)
            await worker.run_once()
        assert [(r.status, r.headers["traceparent"], r.headers["tracestate"]) for r in receiver.requests] == [
            (500, expected, "vendor=value"), (200, expected, "vendor=value"), (200, expected, "vendor=value")]
        [failed] = [line for line in logged if line["event"] == "attempt failed"]
        assert (failed["trace_id"], failed["span_id"]) == (f"{producer.trace_id:032x}", f"{producer.span_id:016x}")

    async def test_an_untraced_event_sends_no_traceparent(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """Published outside a trace, with no exporter: nothing stored, no header."""
        add_endpoint(db, receiver, "/hook")
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a", dedupe_key="k")
            conn.commit()
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        [request] = receiver.requests
        assert "traceparent" not in request.headers and "tracestate" not in request.headers
        assert db.execute("SELECT traceparent FROM outbox_event").fetchall() == [(None,)]


class TestStored:
    async def test_every_way_of_publishing_stores_the_callers_context(self, dsn: str, db: psycopg.Connection) -> None:
        """publish (with and without a dedupe key), publish_many and apublish store the current span's
        traceparent with each event; a deduplicated publish writes nothing."""
        tracer, _ = producer_tracer()
        with tracer.start_as_current_span("sync") as sync_span, psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a", dedupe_key="k")
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a", dedupe_key="k")
            outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a", dedupe_key=key)
                                       for key in ("a", None, "k")])
            conn.commit()
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            with tracer.start_as_current_span("async") as async_span:
                await outbox.apublish(aconn, "webhook.test", webhook_test(), org_id="org_a")
            await aconn.commit()
        stored = [tp for (tp,) in db.execute("SELECT traceparent FROM outbox_event ORDER BY id")]
        contexts = (sync_span.get_span_context(), async_span.get_span_context())
        as_header = [f"00-{s.trace_id:032x}-{s.span_id:016x}-{s.trace_flags:02x}" for s in contexts]
        assert stored == [as_header[0]] * 4 + [as_header[1]]
