"""Tracing with the OpenTelemetry SDK's in-memory exporter: a send and its processing are one
trace across every configured backend (sync and async App), a context set by another client is
continued, failures are recorded, and retried / replayed copies link to the original."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

import mqkit
from mqkit import aio, envelope, observe
from mqkit.deadletter import dead_letter_topic, replay
from mqkit.helpers import RetryPolicy, retry
from mqkit.message import OutgoingMessage
from mqkit.telemetry import MqkitInstrumentor
from tests.helpers.apps import running
from tests.telemetry.conftest import Telemetry

#: Joining a group takes seconds on some brokers.
READY = 60.0
#: A W3C context as another service would have sent it.
FOREIGN_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FOREIGN_SPAN = "00f067aa0ba902b7"


def _system(url: str) -> str:
    return observe.system_of(mqkit.parse_url(url).scheme)


def _one(telemetry: Telemetry, name: str) -> ReadableSpan:
    spans = telemetry.named(name)
    assert len(spans) == 1, [s.name for s in telemetry.finished()]
    return spans[0]


def _traceparent(span: ReadableSpan) -> str:
    """The W3C header value naming ``span``."""
    c = span.context
    assert c is not None
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def _check_pair(
    telemetry: Telemetry, url: str, topic: str, group: str, parent: trace.SpanContext
) -> tuple[ReadableSpan, ReadableSpan]:
    send = _one(telemetry, f"send {topic}")
    process = _one(telemetry, f"process {topic}")
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert send.context is not None and process.context is not None
    assert send.context.trace_id == process.context.trace_id == parent.trace_id
    assert send.parent is not None and send.parent.span_id == parent.span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    system = _system(url)
    assert send.attributes is not None and process.attributes is not None
    assert send.attributes["messaging.system"] == system
    assert send.attributes["messaging.destination.name"] == topic
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.operation.name"] == "send"
    assert send.attributes["messaging.message.body.size"] == len(b'{"n":1}')
    assert process.attributes["messaging.system"] == system
    assert process.attributes["messaging.destination.name"] == topic
    assert process.attributes["messaging.consumer.group.name"] == group
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.operation.name"] == "process"
    assert process.attributes["messaging.message.body.size"] == len(b'{"n":1}')
    assert process.attributes["mqkit.delivery.attempt"] == 1
    assert process.attributes["messaging.message.id"] == send.attributes["messaging.message.id"]
    assert process.status.status_code is StatusCode.UNSET
    return send, process


def test_send_and_process_are_one_trace(
    url: str, topic: str, group: str, telemetry: Telemetry
) -> None:
    app = mqkit.App(url)
    got = threading.Event()
    current: list[trace.SpanContext] = []
    headers: list[dict[str, object]] = []

    @app.handler(topic, group=group)
    def handle(message: mqkit.Message) -> None:
        current.append(trace.get_current_span().get_span_context())
        headers.append(dict(message.headers))
        got.set()

    tracer = telemetry.tracer_provider.get_tracer("test")
    with running(app, READY):
        with app.broker.producer() as producer, tracer.start_as_current_span("checkout") as parent:
            message_id = producer.send(topic, {"n": 1}, key="k1")
        assert got.wait(READY)
    send, process = _check_pair(telemetry, url, topic, group, parent.get_span_context())
    assert send.attributes is not None and send.attributes["messaging.message.id"] == message_id
    # The handler runs inside the process span, and the context travelled as W3C headers.
    assert process.context is not None and current == [process.context]
    assert send.context is not None
    assert headers[0][envelope.TRACEPARENT] == _traceparent(send)


def test_async_send_and_process_are_one_trace(
    url: str, topic: str, group: str, telemetry: Telemetry
) -> None:
    app = aio.App(url)
    tracer = telemetry.tracer_provider.get_tracer("test")
    parents: list[trace.SpanContext] = []
    current: list[trace.SpanContext] = []

    @app.handler(topic, group=group)
    async def handle(message: aio.AsyncMessage) -> None:
        current.append(trace.get_current_span().get_span_context())
        app.stop()

    async def produce() -> None:
        assert app.broker is not None
        async with app.broker.producer() as producer:
            with tracer.start_as_current_span("checkout") as parent:
                parents.append(parent.get_span_context())
                await producer.send(topic, {"n": 1})

    async def main() -> None:
        await asyncio.wait_for(app.run(on_ready=produce, install_signal_handlers=False), READY)

    asyncio.run(main())
    _, process = _check_pair(telemetry, url, topic, group, parents[0])
    assert current == [process.context]


def test_a_context_from_another_client_is_continued(
    url: str, topic: str, group: str, telemetry: Telemetry
) -> None:
    app = mqkit.App(url)
    got = threading.Event()
    app.handler(topic, group=group)(lambda message: got.set())
    with running(app, READY):
        with app.broker.producer() as producer:
            # Straight to the adapter, as a plain client of the broker would publish it.
            producer._driver.send(
                OutgoingMessage(
                    topic,
                    b'{"n":1}',
                    headers={
                        "traceparent": f"00-{FOREIGN_TRACE}-{FOREIGN_SPAN}-01",
                        "tracestate": "vendor=abc",
                    },
                    content_type="application/json",
                )
            )
            producer.flush()
        assert got.wait(READY)
    process = _one(telemetry, f"process {topic}")
    assert process.context is not None and process.parent is not None
    assert f"{process.context.trace_id:032x}" == FOREIGN_TRACE
    assert f"{process.parent.span_id:016x}" == FOREIGN_SPAN
    assert process.parent.is_remote
    assert process.context.trace_state.get("vendor") == "abc"
    assert telemetry.named(f"send {topic}") == []


@pytest.fixture(params=["memory", "sqlite"])
def local_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://otel-{uuid.uuid4().hex[:8]}"
    return f"sqlite:///{tmp_path / 'q.db'}?poll_interval=0.01"


def test_a_failure_is_recorded_and_the_redelivery_is_a_sibling(
    local_url: str, topic: str, group: str, telemetry: Telemetry
) -> None:
    app = mqkit.App(local_url)
    done = threading.Event()

    @app.handler(topic, group=group)
    def handle(message: mqkit.Message) -> None:
        if message.attempt == 1:
            raise ValueError("out of stock")
        done.set()

    with running(app, READY):
        with app.broker.producer() as producer:
            producer.send(topic, {"n": 1})
        assert done.wait(30)
    send = _one(telemetry, f"send {topic}")
    first, second = sorted(
        telemetry.named(f"process {topic}"),
        key=lambda s: str(s.attributes["mqkit.delivery.attempt"] if s.attributes else 0),
    )
    assert send.context is not None
    for span in (first, second):
        assert span.parent is not None and span.parent.span_id == send.context.span_id
    assert first.status.status_code is StatusCode.ERROR
    assert "ValueError: out of stock" in (first.status.description or "")
    [event] = [e for e in first.events if e.name == "exception"]
    assert event.attributes is not None and event.attributes["exception.type"] == "ValueError"
    assert second.status.status_code is StatusCode.UNSET
    stats = app.stats(group).snapshot()
    assert (stats["failed"], stats["processed"]) == (1, 1)
    counters = telemetry.counters()
    assert counters[("mqkit.messages.failed", group)] == 1
    assert counters[("mqkit.messages.processed", group)] == 1
    assert counters[("mqkit.messages.nacked", group)] == 1
    assert counters[("mqkit.messages.acked", group)] == 1
    assert counters[("messaging.client.consumed.messages", group)] == 2
    assert counters[("messaging.client.sent.messages", topic)] == 1
    # Histograms: one send measured, two processings.
    assert counters[("messaging.client.operation.duration", topic)] == 1
    assert counters[("messaging.process.duration", group)] == 2


def test_retry_copies_and_replays_link_to_the_original(
    local_url: str, topic: str, group: str, telemetry: Telemetry
) -> None:
    """Through the retry topic: the copy's processing is a child of the copy's send (made
    while the failed try was processed) and links to the original send; so does a replayed
    dead letter, in a trace of its own. Stats and metrics count the same events."""
    app = mqkit.App(local_url)
    tries: list[int] = []
    dead = threading.Event()
    healed = threading.Event()
    mw = retry(RetryPolicy.fixed(0.01, max_attempts=2), via="topics")

    @app.handler(topic, group=group, middleware=[mw])
    def handle(message: mqkit.Message) -> None:
        tries.append(message.attempt)
        if healed.is_set():
            return
        if len(tries) == 2:
            dead.set()
        raise ValueError("no stock")

    with running(app, READY):
        dlq = app.broker.consumer(dead_letter_topic(group), group="watch", serializer="bytes")
        with app.broker.producer() as producer:
            producer.send(topic, {"n": 1})
        letter = dlq.receive(timeout=30)
        assert letter is not None and dead.wait(10)
        letter.ack()
        dlq.close()
        healed.set()
        assert len(replay(app.broker, group, first_wait=10)) == 1
        for _ in range(300):
            if app.stats(group).processed:
                break
            time.sleep(0.05)
    original = _one(telemetry, f"send {topic}")
    assert original.context is not None
    assert letter.headers[envelope.ORIGIN_TRACEPARENT] == _traceparent(original)
    spans = sorted(telemetry.named(f"process {topic}"), key=lambda s: s.start_time or 0)
    assert len(spans) == 3, spans
    first, retried, replayed = spans
    assert not first.links
    assert first.status.status_code is retried.status.status_code is StatusCode.ERROR
    assert replayed.status.status_code is StatusCode.UNSET
    for span in (retried, replayed):
        [link] = span.links
        assert link.context.span_id == original.context.span_id
        assert link.context.trace_id == original.context.trace_id
    sends = {s.context.span_id: s for s in telemetry.finished() if s.kind is SpanKind.PRODUCER}
    assert retried.parent is not None and first.context is not None
    copy = sends[retried.parent.span_id]
    assert copy.parent is not None and copy.parent.span_id == first.context.span_id
    assert replayed.context is not None
    assert replayed.context.trace_id != original.context.trace_id  # the replay's own trace
    stats = app.stats(group).snapshot()
    assert stats == {
        "processed": 1,
        "failed": 2,
        "retried": 1,
        "dead_lettered": 1,
        "duplicates": 0,
        "deferred": 0,
    }
    counters = telemetry.counters()
    for name, count in stats.items():
        assert counters.get((f"mqkit.messages.{name}", group), 0) == count, name


def test_uninstrumented_sends_carry_no_context(topic: str) -> None:
    instrumentor = MqkitInstrumentor()
    instrumentor.instrument()
    instrumentor.uninstrument()
    assert observe.active is None
    with mqkit.connect(f"memory://{uuid.uuid4().hex}") as broker:
        consumer = broker.consumer(topic, group="g")
        with broker.producer() as producer:
            producer.send(topic, 1)
        message = consumer.receive(timeout=5)
        assert message is not None and envelope.TRACEPARENT not in message.headers


def test_async_retry_copy_is_processed_in_its_own_span(
    local_url: str, topic: str, group: str, telemetry: Telemetry
) -> None:
    """mqkit.aio.App with retry topics: the relay's span (a thread) is the current span in
    the async handler (on the loop), and links to the original send."""
    app = aio.App(local_url)
    current: list[trace.SpanContext] = []

    @app.handler(topic, group=group, middleware=[retry(RetryPolicy.fixed(0.01), via="topics")])
    async def handle(message: aio.AsyncMessage) -> None:
        current.append(trace.get_current_span().get_span_context())
        if message.attempt == 1:
            raise ValueError("later")
        app.stop()

    async def produce() -> None:
        assert app.broker is not None
        async with app.broker.producer() as producer:
            await producer.send(topic, {"n": 1})

    asyncio.run(asyncio.wait_for(app.run(on_ready=produce, install_signal_handlers=False), 30))
    original = _one(telemetry, f"send {topic}")
    first, second = sorted(telemetry.named(f"process {topic}"), key=lambda s: s.start_time or 0)
    assert current == [first.context, second.context]
    assert first.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.UNSET
    assert original.context is not None
    [link] = second.links
    assert link.context.span_id == original.context.span_id
    assert app.stats(group).snapshot()["processed"] == 1


def test_queue_depth_of_a_running_app(local_url: str, topic: str, telemetry: Telemetry) -> None:
    """The backlog gauge: what the group has not acked, while the App runs."""
    app = mqkit.App(local_url)
    go = threading.Event()
    app.handler(topic, group="slow")(lambda message: go.wait(10))

    def depth() -> int | None:
        data = telemetry.metrics.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "mqkit.queue.depth":
                        for point in metric.data.data_points:
                            attributes = point.attributes or {}
                            if attributes.get("messaging.consumer.group.name") == "slow":
                                return int(getattr(point, "value", -1))
        return None

    with running(app):
        with app.broker.producer() as producer:
            for n in range(5):
                producer.send(topic, n)
        assert app.broker.depth("slow", topic) == 5
        assert depth() == 5  # one in the handler, four waiting
        go.set()
        for _ in range(500):
            if app.stats("slow").processed == 5:
                break
            time.sleep(0.02)
        assert depth() == 0
    assert depth() is None  # the App stopped: nothing reported
