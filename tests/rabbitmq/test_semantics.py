"""RabbitMQ-specific behaviour: the wire format, partition hand-over between members, attempts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pika
import pytest
from mqkit_rabbitmq.consumer import Consumer as RabbitConsumer
from mqkit_rabbitmq.wire import properties

import mqkit
from mqkit import envelope
from mqkit.message import OutgoingMessage
from tests.rabbitmq.conftest import delete_group, receive_all


def test_wire_format_is_plain_amqp(rabbit_url: str, clean: tuple[str, str]) -> None:
    """Raw AMQP clients see persistent messages with message_id, timestamp, content type and
    headers, routed by their key; and what a raw client publishes with any routing key reaches
    mqkit consumers, that routing key as its key."""
    topic, group = clean
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url.split("?")[0]))
    try:
        channel = conn.channel()
        with mqkit.connect(rabbit_url, serializer="bytes") as broker:
            consumer = broker.consumer(topic, group=group)
            tap = channel.queue_declare("", exclusive=True).method.queue
            assert tap is not None
            channel.queue_bind(tap, topic, routing_key="#")
            with broker.producer() as producer:
                sent = producer.send(topic, b"\x00raw", key="order-7", headers={"trace": "t1"})
            method, props, body = None, None, None
            for _ in range(50):
                method, props, body = channel.basic_get(tap, auto_ack=True)
                if method is not None:
                    break
                time.sleep(0.1)
            assert method is not None and props is not None
            assert bytes(body or b"") == b"\x00raw"  # type: ignore[arg-type]
            assert props.delivery_mode == 2
            assert props.message_id == sent
            assert abs((props.timestamp or 0) - time.time()) < 60
            assert props.headers is not None and props.headers["trace"] == "t1"
            assert props.headers[envelope.KEY] == "order-7"
            millis = int(props.headers[envelope.TIMESTAMP])  # the native field has seconds
            assert millis // 1000 == props.timestamp
            assert set(props.headers) == {"trace", envelope.KEY, envelope.TIMESTAMP}
            assert method.routing_key == "order-7"
            assert props.content_type == "application/octet-stream"

            [mine] = receive_all([consumer], 1)
            assert (mine.id, mine.key, dict(mine.headers)) == (sent, "order-7", {"trace": "t1"})
            assert mine.timestamp == millis / 1000

            channel.basic_publish(
                topic, "u", b"from pika", pika.BasicProperties(headers={"n": 5}, message_id="m-1")
            )
            [foreign] = receive_all([consumer], 1)
            assert foreign.body == b"from pika"
            assert foreign.id == "m-1" and foreign.key == "u"
            assert dict(foreign.headers) == {"n": 5}

            channel.basic_publish(  # a bridge from another transport keeps mqkit's id
                topic, "u", b"bridged", pika.BasicProperties(headers={envelope.ID: "b-1"})
            )
            [bridged] = receive_all([consumer], 1)
            assert (bridged.id, dict(bridged.headers)) == ("b-1", {})
    finally:
        conn.close()


@pytest.mark.parametrize("sent_at", [1796665367.9996, 1796665367.0004, 1796665367.5])
def test_the_native_timestamp_is_the_seconds_of_the_header(sent_at: float) -> None:
    """Just below a whole second the milliseconds round up: the native field (whole seconds)
    must follow them, not lag a second behind."""
    props = properties(OutgoingMessage("t", b"", timestamp=sent_at))
    assert props.headers is not None
    assert int(props.headers[envelope.TIMESTAMP]) // 1000 == props.timestamp


def test_foreign_messages_without_id_get_a_stable_one(
    rabbit_url: str, clean: tuple[str, str]
) -> None:
    """A message published without ``message_id`` keeps one id across redeliveries (so the
    idempotency helper works for other producers); different messages get different ids; the
    AMQP ``timestamp`` is the message's time."""
    topic, group = clean
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url.split("?")[0]))
    try:
        channel = conn.channel()
        with mqkit.connect(rabbit_url, serializer="bytes") as broker:
            consumer = broker.consumer(topic, group=group)
            channel.basic_publish(topic, "u", b"one", pika.BasicProperties(timestamp=1_700_000_000))
            first = consumer.receive(timeout=10)
            assert first is not None and first.body == b"one" and first.attempt == 1
            assert first.timestamp == 1_700_000_000.0
            first.nack()
            again = consumer.receive(timeout=10)
            assert again is not None and again.body == b"one" and again.attempt == 2
            assert again.id == first.id
            again.ack()
            channel.basic_publish(topic, "u", b"two", pika.BasicProperties(headers={"h": "v"}))
            [second] = receive_all([consumer], 1)
            assert second.body == b"two" and second.id not in (first.id, "")
            assert dict(second.headers) == {"h": "v"}
            assert abs(second.timestamp - time.time()) < 60  # no time sent: the receive time
    finally:
        conn.close()


def test_receive_without_waiting_returns_what_arrived(
    rabbit_url: str, clean: tuple[str, str]
) -> None:
    """``receive(timeout=0)`` hands out messages that already reached the consumer."""
    topic, group = clean
    with mqkit.connect(rabbit_url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            sent = [producer.send(topic, n) for n in range(5)]
        time.sleep(1.0)  # within prefetch: all five arrive meanwhile
        got = [consumer.receive(timeout=0) for _ in range(5)]
        # unkeyed messages spread over the partitions: no order between them
        assert sorted(m.id if m is not None else "" for m in got) == sorted(sent)
        assert consumer.receive(timeout=0) is None
        for message in got:
            assert message is not None
            message.ack()


def test_an_ack_without_waiting_is_written_before_it_returns(
    rabbit_url: str, clean: tuple[str, str]
) -> None:
    """``ack_nowait`` (the async API's inline ack) acks on the caller's thread when nobody
    polls the connection, and declines while a thread holds it; what it acked does not come
    back to the group after the consumer closes."""
    topic, group = clean
    with mqkit.connect(rabbit_url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            sent = [producer.send(topic, n) for n in range(4)]
        got = receive_all([consumer], 0)  # (nothing: only lets the deliveries arrive)
        time.sleep(1.0)
        first = [consumer.receive(timeout=0) for _ in range(4)]
        driver = consumer._driver
        assert isinstance(driver, RabbitConsumer)
        held = [m for m in first if m is not None]
        assert sorted(m.id for m in held) == sorted(sent)
        driver._io.acquire()  # a polling thread holds the connection
        try:
            assert driver.ack_nowait(held[0].delivery) is False
        finally:
            driver._io.release()
        # A receive that finds nothing polls the connection on this thread (as the async
        # API's receiving thread does); the I/O thread then stays away from it for a while.
        assert consumer.receive(timeout=0.01) is None
        assert [driver.ack_nowait(m.delivery) for m in held] == [True] * 4
        consumer.close()
        again = broker.consumer(topic, group=group)
        assert again.receive(timeout=2) is None, "an inline ack was not written"
        assert got == []
        again.close()


def test_attempt_counts_redeliveries_across_consumers(
    rabbit_url: str, clean: tuple[str, str]
) -> None:
    topic, group = clean
    with mqkit.connect(rabbit_url) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            sent = producer.send(topic, "x", key="k")
        message = first.receive(timeout=10)
        assert message is not None and (message.id, message.attempt) == (sent, 1)
        message.nack()
        again = first.receive(timeout=10)
        assert again is not None and (again.id, again.attempt) == (sent, 2)
        first.close()  # unacked: back to the group, counted
        second = broker.consumer(topic, group=group)
        third = second.receive(timeout=10)
        assert third is not None and (third.id, third.attempt) == (sent, 3)
        third.ack()


def test_multi_topic_consumer(rabbit_url: str, clean: tuple[str, str]) -> None:
    topic, group = clean
    other = topic + "-b"
    try:
        with mqkit.connect(rabbit_url) as broker:
            consumer = broker.consumer([topic, other], group=group)
            with broker.producer() as producer:
                producer.send(topic, 1, key="a")
                producer.send(other, 2)
            got = sorted((m.topic, m.value) for m in receive_all([consumer], 2))
            assert got == [(topic, 1), (other, 2)]
    finally:
        delete_group(rabbit_url, other, group, 64)


_MEMBER = """
import sys, time, mqkit
url, topic, group, take = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
broker = mqkit.connect(url)
consumer = broker.consumer(topic, group=group, partitions=2)
print("joined", flush=True)
done = 0
while True:
    message = consumer.receive(timeout=30)
    if message is None:
        sys.exit("nothing within 30 s")
    if done < take:
        message.ack()
        print("acked", message.key, message.value, flush=True)
        done += 1
        if done == take:
            print("holding", flush=True)
    # from then on: take messages and never settle them
"""


def test_killed_member_hands_its_partitions_over_in_key_order(
    rabbit_url: str, clean: tuple[str, str], tmp_path: Path
) -> None:
    """Two members share a group's two partitions; one is SIGKILLed while holding unacked
    messages. The survivor takes its partition over and continues every key where the dead
    member's acks stopped, in order, with the unacked messages first."""
    topic, group = clean
    keys, per_key = 12, 10  # enough keys that both partitions get some
    script = tmp_path / "member.py"
    script.write_text(_MEMBER)
    with mqkit.connect(rabbit_url) as broker:
        survivor = broker.consumer(topic, group=group, partitions=2)
        child = subprocess.Popen(
            [sys.executable, str(script), rabbit_url, topic, group, "5"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "joined"
            time.sleep(1.0)  # the members settle on one partition each
            with broker.producer() as producer:
                for seq in range(per_key):
                    for k in range(keys):
                        producer.send(topic, seq, key=f"key-{k}")
            child_acked: dict[str, list[int]] = defaultdict(list)
            for line in child.stdout:
                if line.startswith("acked"):
                    _, key, value = line.split()
                    child_acked[key].append(int(value))
                if line.startswith("holding"):
                    break
            mine: dict[str, list[tuple[int, int]]] = defaultdict(list)
            taken = 0
            end = time.monotonic() + 5
            while time.monotonic() < end:  # what the survivor gets while the child is alive
                message = survivor.receive(timeout=0.2)
                if message is not None:
                    mine[message.key or ""].append((message.value, message.attempt))
                    message.ack()
                    taken += 1
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        expected = keys * per_key - sum(len(v) for v in child_acked.values())
        for message in receive_all([survivor], expected - taken, deadline=30):
            mine[message.key or ""].append((message.value, message.attempt))
    assert child_acked, "the killed member had a partition"
    assert taken > 0, "the survivor had a partition while both were alive"
    for k in range(keys):
        key = f"key-{k}"
        acked = child_acked.get(key, [])
        assert acked == list(range(len(acked))), f"{key}: child acked out of order {acked}"
        values = [value for value, _ in mine[key]]
        assert values == list(range(len(acked), per_key)), f"{key} continued wrongly: {values}"
    redelivered = [a for v in mine.values() for _, a in v if a > 1]
    assert redelivered, "the messages the dead member held came back with attempt > 1"


def test_depth_counts_the_groups_ready_messages(rabbit_url: str, names: tuple[str, str]) -> None:
    """broker.depth: what waits in the group's partition queues (a message a member holds
    unacked is not counted: RabbitMQ's queue counts leave it out)."""
    topic, group = names
    with mqkit.connect(rabbit_url) as broker:
        broker.declare(topic, group=group)
        assert broker.depth(group, topic) == 0
        assert broker.depth("no-such-group", topic) == 0
        with broker.producer() as producer:
            for n in range(7):
                producer.send(topic, n, key=f"k{n}")
        assert broker.depth(group, topic) == 7
        with broker.consumer(topic, group=group) as consumer:
            message = consumer.receive(timeout=10)
            assert message is not None
            message.ack()
        # Closed: what the member had prefetched is back in its queue.
        deadline = time.monotonic() + 10
        while broker.depth(group, topic) != 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert broker.depth(group, topic) == 6
    delete_group(rabbit_url, topic, group, 2)
