"""RocketMQ semantics through the adapter and the unmodified official client, against the
RocketMQ 5 *test server* (``rocketmq_test_server.py``, not a broker): interoperability with
plain RocketMQ clients, invisible-time expiry, FIFO message groups, dead-lettering after the
retry limit, a restart of the server in the middle of a stream, and batches polled ahead of
the application that keep ``attempt`` exact.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from rocketmq import (  # type: ignore[import-untyped,unused-ignore]
    ClientConfiguration,
    Credentials,
    FilterExpression,
    Message,
    Producer,
    SimpleConsumer,
)

import mqkit
from tests.conformance.util import assert_quiet, collect
from tests.rocketmq.rocketmq_helpers import running_server, start_server, url_or_server

__all__ = ["url_or_server"]  # the fixture, imported for pytest


def _endpoint(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0].split("@")[-1]


def _raw_consumer(url: str, group: str, topic: str) -> Any:
    config = ClientConfiguration(_endpoint(url), Credentials())
    consumer = SimpleConsumer(config, group, {topic: FilterExpression()}, await_duration=5)
    consumer.startup()
    return consumer


def _raw_receive(consumer: Any, count: int, deadline: float = 20.0) -> list[Any]:
    out: list[Any] = []
    end = time.monotonic() + deadline
    while len(out) < count and time.monotonic() < end:
        for message in consumer.receive(16, 15):
            out.append(message)
            consumer.ack(message)
    return out


def _name(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def test_mqkit_messages_are_plain_rocketmq_messages(url_or_server: str) -> None:
    topic, group = _name("interop"), _name("raw")
    rtopic, rgroup = topic.replace(".", "_"), group.replace(".", "_")
    with mqkit.connect(url_or_server) as broker, broker.producer() as producer:
        broker.consumer(topic, group="warmup").close()  # makes sure the topic exists
        raw = _raw_consumer(url_or_server, rgroup, rtopic)
        try:
            time.sleep(0.5)
            sent = producer.send(topic, {"n": 1}, key="customer-7", headers={"trace": "t1"})
            producer.flush()
            [message] = _raw_receive(raw, 1)
        finally:
            raw.shutdown()
    assert message.topic == rtopic  # '.' in mqkit names becomes '_' on RocketMQ
    assert message.body == b'{"n":1}'
    assert message.message_group == "customer-7"  # key -> FIFO message group
    assert message.properties["trace"] == "t1"  # headers -> user properties
    assert message.properties["mqkit.id"] == sent
    assert sent in message.keys  # searchable by key in RocketMQ's tools


def test_plain_rocketmq_messages_reach_mqkit(url_or_server: str) -> None:
    topic, group = _name("interop"), _name("g")
    with mqkit.connect(url_or_server) as broker:
        consumer = broker.consumer(topic, group=group)
        config = ClientConfiguration(_endpoint(url_or_server), Credentials())
        raw = Producer(config)
        raw.startup()
        try:
            message = Message()
            message.topic = topic.replace(".", "_")
            message.body = b"from a plain client"
            message.message_group = "grp-1"
            message.add_property("origin", "java-shop")
            receipt = raw.send(message)
        finally:
            raw.shutdown()
        got = consumer.receive(timeout=20)
        assert got is not None
        assert got.body == b"from a plain client"
        assert got.key == "grp-1"
        assert dict(got.headers) == {"origin": "java-shop"}  # no broker-added properties
        assert got.id == receipt.message_id
        assert got.topic == topic
        got.ack()


def test_unacked_message_comes_back_after_its_invisible_time(tmp_path: Path) -> None:
    with running_server(
        tmp_path, "--auto-create-topics", "--fifo-groups", "--min-invisible-time", "1"
    ) as server, mqkit.connect(server.url + "?visibility_timeout=1") as broker:
        first = broker.consumer("lease", group="workers")
        second = broker.consumer("lease", group="workers")
        with broker.producer() as producer:
            sent = producer.send("lease", "slow job")
        taken = first.receive(timeout=10)
        assert taken is not None and (taken.id, taken.attempt) == (sent, 1)
        # "first" hangs without acking; after 1 s the message is visible to the group again.
        again = second.receive(timeout=10)
        assert again is not None and (again.id, again.attempt) == (sent, 2)
        again.ack()
        taken.ack()  # too late: logged, not raised (the handle expired)


def test_fifo_group_holds_a_key_while_one_of_its_messages_is_in_flight(
    url_or_server: str,
) -> None:
    topic, group = _name("fifo"), _name("g")
    with mqkit.connect(url_or_server) as broker:
        a = broker.consumer(topic, group=group)
        b = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, 1, key="k")
            producer.send(topic, 2, key="k")
            producer.send(topic, "other", key="other-key")
        first = a.receive(timeout=10)
        assert first is not None and first.value == 1
        # b may take the other key, but not message 2 of "k" while 1 is in flight.
        seen = []
        while (m := b.receive(timeout=1.5)) is not None:
            seen.append(m.value)
            m.ack()
        assert seen == ["other"]
        first.ack()
        second = b.receive(timeout=10) or a.receive(timeout=10)
        assert second is not None and second.value == 2
        second.ack()


def test_message_goes_to_the_dead_letter_topic_after_the_retry_limit(tmp_path: Path) -> None:
    with running_server(
        tmp_path, "--auto-create-topics", "--fifo-groups", "--retry-max-times", "1"
    ) as server, mqkit.connect(server.url) as broker:
        consumer = broker.consumer("jobs", group="workers")
        with broker.producer() as producer:
            sent = producer.send("jobs", "poison", headers={"h": "v"})
        for attempt in (1, 2):  # retry_max_times=1: two deliveries in all
            message = consumer.receive(timeout=10)
            assert message is not None and (message.id, message.attempt) == (sent, attempt)
            message.nack()
        assert consumer.receive(timeout=2) is None
        raw = _raw_consumer(server.url, "dlq-reader", "%DLQ%workers")
        try:
            [dead] = _raw_receive(raw, 1)
        finally:
            raw.shutdown()
        assert dead.body == b'"poison"'
        assert dead.properties["mqkit.id"] == sent


def test_restart_of_the_server_mid_stream_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(
        tmp_path / "run1", "--auto-create-topics", "--fifo-groups", "--data-dir", str(data)
    )
    try:
        with mqkit.connect(server.url + "?connect_timeout=10") as broker:
            consumer = broker.consumer("stream", group="billing")
            producer = broker.producer()
            for i in range(10):
                producer.send("stream", i, key=f"k{i % 3}")
            producer.flush()
            acked = []
            for _ in range(5):
                message = consumer.receive(timeout=10)
                assert message is not None
                acked.append(message.value)
                message.ack()
            server.stop()  # the test server goes away mid-stream...
            server = start_server(
                tmp_path / "run2",
                "--auto-create-topics",
                "--fifo-groups",
                "--data-dir",
                str(data),
                port=server.port,
            )  # ...and comes back on the same port with its journal
            for i in range(10, 15):
                producer.send("stream", i, key=f"k{i % 3}")
            producer.flush(timeout=20)
            rest: list[int] = []
            end = time.monotonic() + 30
            while len(set(rest)) < 10 and time.monotonic() < end:
                message = consumer.receive(timeout=1)
                if message is not None:
                    rest.append(message.value)
                    message.ack()
            producer.close()
        assert set(rest) == set(range(15)) - set(acked)
    finally:
        server.stop()


def test_group_that_is_not_fifo_warns_about_key_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_server(tmp_path, "--auto-create-topics") as server, mqkit.connect(
        server.url
    ) as broker:
        consumer = broker.consumer("orders", group="plain")
        with broker.producer() as producer:
            producer.send("orders", 1, key="k")
        with caplog.at_level(logging.WARNING, logger="mqkit_rocketmq.v5"):
            message = consumer.receive(timeout=10)
        assert message is not None and message.key == "k"
        message.ack()
        assert "is not FIFO" in caplog.text and "updateSubGroup" in caplog.text


def test_mqkit_dead_letters_keep_their_multiline_headers(url_or_server: str) -> None:
    from mqkit.deadletter import TRACEBACK, dead_letter_topic, send_dead_letter

    topic, group = _name("work"), _name("g")
    with mqkit.connect(url_or_server) as broker:
        consumer = broker.consumer(topic, group=group)
        letters = broker.consumer(dead_letter_topic(group), group=group + "-ops")
        with broker.producer() as producer:
            producer.send(topic, {"job": 1}, key="k", headers={"trace": "t"})
        message = consumer.receive(timeout=10)
        assert message is not None
        try:
            raise ValueError("bad\tjob\nsecond line")
        except ValueError as exc:
            error = exc
        with broker.producer(serializer="bytes") as raw:
            send_dead_letter(raw, message, group, error)
        message.ack()
        dead = letters.receive(timeout=10)
        assert dead is not None
        assert dead.body == message.body and dead.key == "k"
        assert dead.headers["trace"] == "t"
        assert "second line" in dead.headers[TRACEBACK] and "\n" in dead.headers[TRACEBACK]
        dead.ack()


# -- batches: a consumer polls up to `prefetch` messages and keeps `attempt` exact ---------------


def _buffered(consumer: mqkit.Consumer) -> int:
    """Messages polled but not yet handed to the application (the adapter's local buffer)."""
    return len(consumer._driver._buffer)  # type: ignore[attr-defined]


def test_batch_messages_given_back_unseen_keep_their_attempt(url_or_server: str) -> None:
    topic, group = _name("batch"), _name("g")
    with mqkit.connect(url_or_server) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            ids = [producer.send(topic, i) for i in range(20)]
        seen = collect(first, 8)  # polls of 1, 2, 4 and 8 messages
        assert len(seen) == 8 and _buffered(first) > 0
        first.close()  # gives the buffered messages back: RocketMQ counts that delivery
        second = broker.consumer(topic, group=group)
        rest = collect(second, 12)
        assert sorted(m.id for m in seen + rest) == sorted(ids)
        assert [m.attempt for m in rest] == [1] * 12  # as the application saw them
        assert any(m.delivery.handle.message.delivery_attempt == 2 for m in rest)
        assert_quiet(second)


def test_nack_gives_back_buffered_successors_of_its_key_unseen(url_or_server: str) -> None:
    topic, group = _name("batch"), _name("g")
    with mqkit.connect(url_or_server) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(12):
                producer.send(topic, i, key="same")
        order: list[tuple[int, int]] = []
        for message in collect(consumer, 3):  # polls of 1 and 2 messages
            order.append((message.value, message.attempt))
        [third] = collect(consumer, 1, ack=False)  # a poll of 4: three more of "same" buffered
        assert _buffered(consumer) > 0
        order.append((third.value, third.attempt))
        third.nack()
        for message in collect(consumer, 9):
            order.append((message.value, message.attempt))
        assert order == [(0, 1), (1, 1), (2, 1), (3, 1), (3, 2)] + [(i, 1) for i in range(4, 12)]
        assert_quiet(consumer)


def test_buffered_messages_are_renewed_before_they_are_handed_out(tmp_path: Path) -> None:
    with running_server(
        tmp_path, "--auto-create-topics", "--fifo-groups", "--min-invisible-time", "1"
    ) as server, mqkit.connect(server.url + "?visibility_timeout=2") as broker:
        consumer = broker.consumer("slow", group="workers")
        with broker.producer() as producer:
            ids = [producer.send("slow", i) for i in range(10)]
        seen = collect(consumer, 4)  # polls of 1, 2 and 4 messages
        assert _buffered(consumer) > 0
        time.sleep(1.2)  # more than half of the buffered messages' invisible time is gone
        late = consumer.receive(timeout=5)  # renewed for 2 s before it is handed out
        assert late is not None
        time.sleep(1.2)  # past its first invisible time: unrenewed, this ack would be too late
        late.ack()
        # The rest ran out in the buffer: given back unseen, they come again as attempt 1.
        rest = collect(consumer, 5)
        got = [*seen, late, *rest]
        assert sorted(m.id for m in got) == sorted(ids)
        assert [m.attempt for m in got] == [1] * 10
        assert_quiet(consumer, wait=3.0)


def test_subscription_is_confirmed_when_the_route_answer_beats_the_callback(
    url_or_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client makes a consumer's telemetry stream (which confirms its subscription) in the
    callback of its first route lookup. When the lookup finishes before the callback is added
    (a busy machine), that callback runs in the thread calling ``startup()``, and gRPC's asyncio
    layer needs an event loop there: a fresh thread has none, the stream is never made and the
    subscription never confirmed. Forcing that order must still give working consumers.
    """
    from rocketmq.v5.client.connection.rpc_client import (  # type: ignore[import-untyped,unused-ignore]
        RpcClient,
    )

    lookup = RpcClient.query_topic_route_async

    def finished_lookup(self: Any, *args: Any, **kwargs: Any) -> Any:
        future = lookup(self, *args, **kwargs)
        future.exception(timeout=10)  # done before the client adds its callback
        return future

    monkeypatch.setattr(RpcClient, "query_topic_route_async", finished_lookup)
    topic = f"fresh-threads-{uuid.uuid4().hex[:8]}"
    errors: list[BaseException] = []

    def subscribe(broker: mqkit.Broker, index: int) -> None:
        try:
            broker.consumer(topic, group=f"g{index}-{uuid.uuid4().hex[:6]}").close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    with mqkit.connect(url_or_server, subscribe_timeout=5) as broker:
        for index in range(3):
            thread = threading.Thread(target=subscribe, args=(broker, index))
            thread.start()
            thread.join()
    assert errors == []
