"""RocketMQ semantics through the adapter and the unmodified official client, against real Apache
RocketMQ 5 (the CI cluster of ``adapters/rocketmq/ci/broker``; for the restart, a private cluster
of the same release): interoperability with plain RocketMQ clients, where a new consumer group
starts, invisible-time expiry, FIFO consumer groups, RocketMQ's own dead-lettering after the
retry limit, a restart of RocketMQ in the middle of a stream, closing while a poll is out, and
batches polled ahead of the application that keep ``attempt`` exact.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

import pytest
from mqkit_rocketmq import admin
from rocketmq import (  # type: ignore[import-untyped,unused-ignore]
    ClientConfiguration,
    Credentials,
    FilterExpression,
    Message,
    Producer,
    SimpleConsumer,
)

import mqkit
from mqkit import envelope
from mqkit.testing.util import assert_quiet, collect
from tests.rocketmq.conftest import Cluster, endpoint, with_query


def _raw_consumer(url: str, namesrv: str, group: str, topic: str, *, at_end: bool = True) -> Any:
    """A plain SimpleConsumer of a new FIFO group, set up as a deployment would with mqadmin;
    ``at_end``: positioned at the topic's end (else RocketMQ's own rule: the start of a young
    queue)."""
    admin.ensure_group(namesrv, group)
    config = ClientConfiguration(endpoint(url), Credentials())
    consumer = SimpleConsumer(config, group, {topic: FilterExpression()}, await_duration=5)
    consumer.startup()
    # The proxy answers a receive before the consumer's settings with a NullPointerException.
    assert consumer._init_settings_event.wait(30)
    if at_end:
        admin.start_group_at_end(namesrv, group, topic)
    return consumer


def _raw_receive(consumer: Any, count: int, deadline: float = 30.0) -> list[Any]:
    out: list[Any] = []
    end = time.monotonic() + deadline
    while len(out) < count and time.monotonic() < end:
        for message in consumer.receive(16, 15):
            out.append(message)
            consumer.ack(message)
    return out


def _name(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


# -- interoperability with plain RocketMQ clients ----------------------------------------------


def test_mqkit_messages_are_plain_rocketmq_messages(rocketmq_url: str, namesrv: str) -> None:
    topic, group = _name("interop"), _name("raw")
    rtopic, rgroup = topic.replace(".", "_"), group.replace(".", "_")
    with mqkit.connect(rocketmq_url) as broker, broker.producer() as producer:
        broker.consumer(topic, group=_name("warmup")).close()  # auto_create makes the topic
        raw = _raw_consumer(rocketmq_url, namesrv, rgroup, rtopic)
        try:
            sent = producer.send(topic, {"n": 1}, key="customer-7", headers={"trace": "t1"})
            producer.flush()
            [message] = _raw_receive(raw, 1)
        finally:
            raw.shutdown()
    assert message.topic == rtopic  # '.' in mqkit names becomes '_' on RocketMQ
    assert message.body == b'{"n":1}'
    assert message.message_group == "customer-7"  # key -> FIFO message group
    assert message.properties["trace"] == "t1"  # headers -> user properties
    assert message.properties[envelope.ID] == sent
    assert sent in message.keys  # searchable by key in RocketMQ's tools


def test_plain_rocketmq_messages_reach_mqkit(rocketmq_url: str) -> None:
    topic, group = _name("interop"), _name("g")
    with mqkit.connect(rocketmq_url) as broker:
        consumer = broker.consumer(topic, group=group)
        raw = Producer(ClientConfiguration(endpoint(rocketmq_url), Credentials()))
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
        got = consumer.receive(timeout=30)
        assert got is not None
        assert got.body == b"from a plain client"
        assert got.key == "grp-1"
        assert dict(got.headers) == {"origin": "java-shop"}  # no broker-added properties
        assert got.id == receipt.message_id
        assert got.topic == topic
        got.ack()


def test_a_body_of_the_declared_maximum_arrives_whole(rocketmq_url: str) -> None:
    """``features.max_body_size`` is what a broker takes by default (``maxMessageSize``), with
    a key and headers on the message too."""
    topic, group = _name("largest"), _name("g")
    with mqkit.connect(rocketmq_url, serializer="bytes") as broker:
        size = broker.features.max_body_size
        body = os.urandom(size)
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, body, key="k" * 70, headers={"trace": "t" * 200})
        [got] = collect(consumer, 1)
        assert (len(got.body), got.body == body, got.key) == (size, True, "k" * 70)


# -- where a new consumer group starts -----------------------------------------------------------


def test_a_new_group_gets_what_is_sent_after_it_subscribed_and_nothing_before(
    rocketmq_url: str, topic: str, group: str
) -> None:
    # RocketMQ positions a group in a queue at its first poll: at the queue's first message
    # while that is still in memory (these young queues), otherwise at the queue's last
    # message. The adapter positions a new group at the end when consumer() subscribes it.
    with mqkit.connect(rocketmq_url) as broker, broker.producer() as producer:
        early = broker.consumer(topic, group=group)
        for i in range(4):
            producer.send(topic, f"before-{i}")
        producer.flush()
        assert len(collect(early, 4)) == 4
        late = broker.consumer(topic, group=group + "-late")
        sent = {producer.send(topic, f"after-{i}") for i in range(4)}
        producer.flush()
        got = collect(late, 4)
        assert {m.id for m in got} == sent
        assert_quiet(late)


# -- invisible time --------------------------------------------------------------------------------


def test_unacked_message_comes_back_after_its_invisible_time(
    rocketmq_url: str, topic: str, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    # visibility_timeout=10 (the CI URL's): the proxy's smallest invisible duration.
    with mqkit.connect(rocketmq_url) as broker:
        first = broker.consumer(topic, group=group)
        second = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            sent = producer.send(topic, "slow job")
        taken = first.receive(timeout=30)
        assert taken is not None and (taken.id, taken.attempt) == (sent, 1)
        # "first" hangs without acking; after 10 s the message is visible to the group again.
        again = second.receive(timeout=40)
        assert again is not None and (again.id, again.attempt) == (sent, 2)
        again.ack()
        with caplog.at_level(logging.WARNING, logger="mqkit.rocketmq"):
            taken.ack()  # too late: logged, not raised (the proxy refuses the expired handle)
        assert "came after its invisible time ran out" in caplog.text
        assert_quiet(first)


# -- FIFO consumer groups (auto_create makes them) ---------------------------------------------


def test_fifo_group_holds_a_key_while_one_of_its_messages_is_in_flight(
    rocketmq_url: str, topic: str, group: str
) -> None:
    # prefetch=1: one message per poll, so what is held back is held by RocketMQ, not by a
    # consumer's buffer. (RocketMQ holds the whole queue the key hashes to.)
    with mqkit.connect(rocketmq_url, prefetch=1) as broker:
        a = broker.consumer(topic, group=group)
        b = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, 1, key="k")
            producer.send(topic, 2, key="k")
        first = a.receive(timeout=30)
        assert first is not None and first.value == 1
        assert b.receive(timeout=3) is None  # 2 waits while 1 is in flight
        first.ack()
        second = b.receive(timeout=30) or a.receive(timeout=30)
        assert second is not None and (second.value, second.attempt) == (2, 1)
        second.ack()


def test_messages_acked_behind_one_that_went_back_are_not_delivered_again(
    rocketmq_url: str, topic: str, group: str
) -> None:
    # A FIFO group's position in a queue moves past acked messages only in queue order: when
    # an earlier message goes back, RocketMQ delivers the queue again from it, acked ones too.
    with mqkit.connect(rocketmq_url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(4):
                producer.send(topic, i, key="k")
        got = collect(consumer, 4, ack=False)  # one batch: the queue is this consumer's
        assert [m.value for m in got] == [0, 1, 2, 3]
        for message in reversed(got[1:]):
            message.ack()
        got[0].nack()
        again = collect(consumer, 1)
        assert [(m.value, m.attempt) for m in again] == [(0, 2)]
        assert_quiet(consumer, wait=3.0)  # 1, 2 and 3 came again: acked again, not handed out


def test_group_that_is_not_fifo_warns_about_key_order(
    plain_url: str, namesrv: str, topic: str, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Without auto_create the broker creates the group on first use, as a concurrent group.
    admin.ensure_topic(namesrv, topic)
    with mqkit.connect(plain_url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, 1, key="k")
        with caplog.at_level(logging.WARNING, logger="mqkit.rocketmq"):
            message = consumer.receive(timeout=30)
        assert message is not None and message.key == "k"
        message.ack()
        assert "is not FIFO" in caplog.text and "updateSubGroup" in caplog.text


# -- dead letters ----------------------------------------------------------------------------------


def test_message_goes_to_rocketmqs_dead_letter_topic_after_the_retry_limit(
    rocketmq_url: str, namesrv: str, topic: str, group: str
) -> None:
    admin.ensure_group(namesrv, group, retry_max_times=1)  # auto_create leaves it as it is
    with mqkit.connect(rocketmq_url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            sent = producer.send(topic, "poison", headers={"h": "v"})
        for attempt in (1, 2):  # retryMaxTimes=1: two deliveries in all
            message = consumer.receive(timeout=30)
            assert message is not None and (message.id, message.attempt) == (sent, attempt)
            message.nack()
        assert consumer.receive(timeout=6) is None  # the proxy moved it to %DLQ%<group>
        raw = _raw_consumer(rocketmq_url, namesrv, f"dlq-{group}", f"%DLQ%{group}", at_end=False)
        try:
            [dead] = _raw_receive(raw, 1)
        finally:
            raw.shutdown()
    assert dead.body == b'"poison"'
    assert dead.properties[envelope.ID] == sent
    assert dead.properties["h"] == "v"


def test_mqkit_dead_letters_keep_their_multiline_headers(rocketmq_url: str) -> None:
    from mqkit.deadletter import TRACEBACK, dead_letter_topic, send_dead_letter

    topic, group = _name("work"), _name("g")
    with mqkit.connect(rocketmq_url) as broker:
        consumer = broker.consumer(topic, group=group)
        letters = broker.consumer(dead_letter_topic(group), group=group + "-ops")
        with broker.producer() as producer:
            producer.send(topic, {"job": 1}, key="k", headers={"trace": "t"})
        message = consumer.receive(timeout=30)
        assert message is not None
        try:
            raise ValueError("bad\tjob\nsecond line")
        except ValueError as exc:
            error = exc
        with broker.producer(serializer="bytes") as raw:
            send_dead_letter(raw, message, group, error)
        message.ack()
        dead = letters.receive(timeout=30)
        assert dead is not None
        assert dead.body == message.body and dead.key == "k"
        assert dead.headers["trace"] == "t"
        traceback = dead.headers[TRACEBACK]
        assert isinstance(traceback, str)
        assert "second line" in traceback and "\n" in traceback
        dead.ack()


# -- restarts and closing ------------------------------------------------------------------------


def test_restart_of_rocketmq_mid_stream_loses_nothing(private_cluster: Cluster) -> None:
    # Name server, broker and proxy stop and start again (the store stays); the connection,
    # producer and consumer made before carry on. connect_timeout bounds the retries while the
    # client's channel reconnects (gRPC backs off for up to tens of seconds).
    url = with_query(private_cluster.url, connect_timeout="60")
    with mqkit.connect(url) as broker:
        consumer = broker.consumer("stream", group="billing")
        producer = broker.producer()
        for i in range(10):
            producer.send("stream", i, key=f"k{i % 3}")
        producer.flush()
        acked = []
        for _ in range(5):
            message = consumer.receive(timeout=30)
            assert message is not None
            acked.append(message.value)
            message.ack()
        private_cluster.stop()  # RocketMQ goes away mid-stream...
        private_cluster.start()  # ...and comes back on the same ports with its store
        for i in range(10, 15):
            producer.send("stream", i, key=f"k{i % 3}")
        producer.flush(timeout=90)
        rest: list[int] = []
        end = time.monotonic() + 90
        while set(rest) != set(range(15)) - set(acked) and time.monotonic() < end:
            message = consumer.receive(timeout=1)
            if message is not None:
                rest.append(message.value)
                message.ack()
        producer.close()
    assert set(rest) == set(range(15)) - set(acked)


def test_close_while_a_poll_is_out_leaves_nothing_invisible(
    rocketmq_url: str, topic: str, group: str
) -> None:
    # A proxy keeps a cancelled long poll waiting on the broker; what it takes then cannot be
    # written to the client and stays invisible for the whole visibility_timeout (30 s here).
    # Whether that poll wins the message a closing consumer gives back is a race, so: rounds.
    url = with_query(rocketmq_url, visibility_timeout="30")
    with mqkit.connect(url) as broker:
        broker.consumer(topic, group=group).close()
        with broker.producer() as producer:
            sent = producer.send(topic, "held", key="k")
        for attempt in range(1, 8):
            consumer = broker.consumer(topic, group=group)
            held = consumer.receive(timeout=15)
            assert held is not None and (held.id, held.attempt) == (sent, attempt)
            if attempt == 7:
                held.ack()
                break
            assert consumer.receive(timeout=0.3) is None  # a long poll is out now
            consumer.close()  # gives "held" back: the poll still out must not keep it
        assert_quiet(consumer)


# -- batches: a consumer polls up to `prefetch` messages and keeps `attempt` exact ---------------


def _buffered(consumer: mqkit.Consumer) -> int:
    """Messages polled but not yet handed to the application (the adapter's local buffer)."""
    return len(consumer._driver._buffer)  # type: ignore[attr-defined]


def test_batch_messages_given_back_unseen_keep_their_attempt(rocketmq_url: str) -> None:
    topic, group = _name("batch"), _name("g")
    with mqkit.connect(rocketmq_url) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            ids = [producer.send(topic, i) for i in range(20)]
        seen = collect(first, 8)  # a FIFO group's first poll takes up to prefetch (16)
        assert len(seen) == 8 and _buffered(first) > 0
        first.close()  # gives the buffered messages back: RocketMQ counts that delivery
        second = broker.consumer(topic, group=group)
        rest = collect(second, 12)
        assert sorted(m.id for m in seen + rest) == sorted(ids)
        assert [m.attempt for m in rest] == [1] * 12  # as the application saw them
        assert any(m.delivery.handle.message.delivery_attempt == 2 for m in rest)
        assert_quiet(second)


def test_nack_gives_back_buffered_successors_of_its_key_unseen(rocketmq_url: str) -> None:
    topic, group = _name("batch"), _name("g")
    with mqkit.connect(rocketmq_url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(12):
                producer.send(topic, i, key="same")
        order: list[tuple[int, int]] = []
        for message in collect(consumer, 3):  # one poll of all 12: nine stay buffered
            order.append((message.value, message.attempt))
        [third] = collect(consumer, 1, ack=False)
        assert _buffered(consumer) > 0
        order.append((third.value, third.attempt))
        third.nack()
        for message in collect(consumer, 9):
            order.append((message.value, message.attempt))
        assert order == [(0, 1), (1, 1), (2, 1), (3, 1), (3, 2)] + [(i, 1) for i in range(4, 12)]
        assert_quiet(consumer)


def test_buffered_messages_are_renewed_before_they_are_handed_out(
    plain_url: str, namesrv: str, topic: str, group: str
) -> None:
    # A concurrent group (made on first use, no auto_create): there an expired receipt handle
    # is refused at once. (A FIFO group still takes the ack of an expired message nobody has
    # popped again, so it would not show whether the renewal happened.)
    # visibility_timeout=20: buffered messages older than 10 s are renewed before hand-out.
    # The sleeps leave 8 s of margin either way for a loaded machine.
    admin.ensure_topic(namesrv, topic)
    with mqkit.connect(with_query(plain_url, visibility_timeout="20")) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            ids = [producer.send(topic, i) for i in range(10)]
        seen = collect(consumer, 4)  # polls of 1, 2 and 4 messages: three stay buffered
        assert _buffered(consumer) > 0
        time.sleep(12)  # more than half of the buffered messages' invisible time is gone
        late = consumer.receive(timeout=5)  # renewed for 20 s before it is handed out
        assert late is not None
        time.sleep(12)  # past its first invisible time: unrenewed, this ack would be refused
        late.ack()
        # The rest ran out in the buffer: given back unseen, they come again as attempt 1.
        rest = collect(consumer, 5)
        got = [*seen, late, *rest]
        assert sorted(m.id for m in got) == sorted(ids)
        assert [m.attempt for m in got] == [1] * 10
        assert_quiet(consumer, wait=5.0)


def test_subscription_is_confirmed_when_the_route_answer_beats_the_callback(
    rocketmq_url: str, monkeypatch: pytest.MonkeyPatch
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

    with mqkit.connect(rocketmq_url, subscribe_timeout=15) as broker:
        for index in range(3):
            thread = threading.Thread(target=subscribe, args=(broker, index))
            thread.start()
            thread.join()
    assert errors == []
