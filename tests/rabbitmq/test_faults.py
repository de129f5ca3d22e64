"""Broker restarts and crashes, against a private node the test itself stops and starts."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pika
import pytest
from mqkit_rabbitmq.wire import group_base, partition_queue

import mqkit
from mqkit import BrokerUnavailable, Message
from tests.rabbitmq.conftest import Node


def _wait(condition: object, deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_restart_mid_consume_loses_nothing_and_redelivers_only_unacked(
    node: Node, names: tuple[str, str]
) -> None:
    topic, group = names
    half = 150
    seen: list[Message] = []
    acked: set[str] = set()
    held: list[Message] = []
    pause, paused, stop = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    with mqkit.connect(node.url, reconnect_timeout=60) as broker:
        consumer = broker.consumer(topic, group=group)
        producer = broker.producer()
        sent = [producer.send(topic, i, key=f"k{i % 5}") for i in range(half)]
        producer.flush(timeout=30)

        def loop() -> None:
            try:
                while not stop.is_set():
                    if pause.is_set():
                        paused.set()
                        time.sleep(0.02)
                        continue
                    message = consumer.receive(timeout=0.2)
                    if message is None:
                        continue
                    seen.append(message)
                    if len(seen) == 40:
                        held.append(message)  # taken, never acked before the drop
                        continue
                    message.ack()
                    acked.add(message.id)
            except BaseException as exc:  # surfaced by the assertions below
                errors.append(exc)

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            _wait(lambda: len(seen) >= 80, 30, "80 messages before the restart")
            pause.set()
            _wait(paused.is_set, 5, "the consume loop to pause")
            time.sleep(0.3)
            acked_before_drop = set(acked)
            node.stop()
            # Sent while the broker is down: buffered, published after the reconnect.
            sent += [producer.send(topic, i, key=f"k{i % 5}") for i in range(half, 2 * half)]
            node.start()
            held[0].ack()  # its connection is gone: a no-op, the broker delivers it again
            pause.clear()
            producer.flush(timeout=60)
            _wait(lambda: set(sent) <= {m.id for m in seen}, 60, "every confirmed message")
            time.sleep(0.5)  # anything redelivered twice would show up now
        finally:
            stop.set()
            thread.join()
        producer.close()

    assert not errors, errors
    counts = Counter(m.id for m in seen)
    assert set(counts) == set(sent), "nothing confirmed is lost"
    redelivered = {i for i, n in counts.items() if n > 1}
    assert not redelivered & acked_before_drop, "acked before the drop means never again"
    assert held[0].id in redelivered, "the unacked message came back"
    again = [m for m in seen if m.id == held[0].id][-1]
    assert again.attempt >= 2


def test_crash_keeps_confirmed_messages_and_reports_a_long_outage(
    node: Node, names: tuple[str, str]
) -> None:
    topic, group = names
    with mqkit.connect(node.url, reconnect_timeout=2) as broker:
        consumer = broker.consumer(topic, group=group)
        created = time.monotonic()
        producer = broker.producer()
        sent = [producer.send(topic, {"n": i}) for i in range(100)]
        producer.flush(timeout=30)
        got: set[str] = set()
        for _ in range(30):
            message = consumer.receive(timeout=10)
            assert message is not None
            got.add(message.id)
            message.ack()
        # RabbitMQ 3.10 can lose a quorum queue that was declared within about a second of a
        # SIGKILL (consume then times out for good); give the new queues time to settle.
        time.sleep(max(0.0, created + 3 - time.monotonic()))

        node.kill()  # SIGKILL: no graceful shutdown, only what quorum queues had synced
        sent.append(producer.send(topic, {"n": "during outage"}))
        time.sleep(2.5)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            producer.flush(timeout=30)
        assert time.monotonic() - started < 1
        assert f"127.0.0.1:{node.port}" in str(info.value)
        assert "reconnect_timeout" in str(info.value)
        with pytest.raises(BrokerUnavailable):
            consumer.receive(timeout=5)

        node.start()
        end = time.monotonic() + 30
        while True:  # the clients reconnect on their own; the outage error clears
            try:
                producer.flush(timeout=5)
                break
            except BrokerUnavailable:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
        sent += [producer.send(topic, {"n": i}) for i in range(100, 200)]
        producer.flush(timeout=30)

        end = time.monotonic() + 60
        while not set(sent) <= got and time.monotonic() < end:
            try:
                message = consumer.receive(timeout=1)
            except BrokerUnavailable:
                time.sleep(0.2)
                continue
            if message is not None:
                got.add(message.id)
                message.ack()
        assert set(sent) <= got, f"{len(set(sent) - got)} confirmed message(s) lost"
        producer.close()


def test_a_keys_partition_survives_a_broker_restart(node: Node, names: tuple[str, str]) -> None:
    """Each key lands on the same partition queue before and after a restart of the node, so
    a backlog and what follows it stay in one queue, in order (RabbitMQ rebuilds a
    consistent-hash ring in recovery order and would move keys; the modulus hash does not)."""
    topic, group = names
    partitions = 4
    queues = [partition_queue(group_base(topic, group), i) for i in range(partitions)]
    keys = [f"customer-{n}" for n in range(16)]

    def placement() -> dict[str, str]:
        """Which partition queue each key's message lands on, one key at a time."""
        where: dict[str, str] = {}
        params = pika.URLParameters(node.url)
        with mqkit.connect(node.url) as broker, broker.producer() as producer:
            connection = pika.BlockingConnection(params)
            try:
                channel = connection.channel()

                def depths() -> list[int]:
                    return [
                        channel.queue_declare(q, passive=True).method.message_count or 0
                        for q in queues
                    ]

                for key in keys:
                    before = depths()
                    producer.send(topic, key, key=key)
                    producer.flush(10)
                    after = depths()
                    changed = [q for q, b, a in zip(queues, before, after, strict=True) if a != b]
                    assert len(changed) == 1, (key, before, after)
                    where[key] = changed[0]
            finally:
                connection.close()
        return where

    with mqkit.connect(node.url) as broker:
        broker.declare(topic, group=group, partitions=partitions)
    first = placement()
    assert len(set(first.values())) > 1  # the keys spread: a move would show
    node.stop()
    node.start()
    assert placement() == first
