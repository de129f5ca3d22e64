"""Store-and-forward through a real broker restart: a private RabbitMQ node stopped for 10 s
(``MQKIT_SPOOL_OUTAGE``) in the middle of a burst sent by a producer with a spool; 0 lost."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import mqkit
from tests.rabbitmq.conftest import Node

OUTAGE = float(os.environ.get("MQKIT_SPOOL_OUTAGE", "10"))


def test_a_burst_through_a_stopped_broker_loses_nothing(
    node: Node, names: tuple[str, str], tmp_path: Path
) -> None:
    topic, group = names
    sent: dict[str, list[str]] = defaultdict(list)
    stop = threading.Event()
    errors: list[BaseException] = []
    with mqkit.connect(node.url) as broker:
        broker.declare(topic, group=group)
        producer = broker.producer(spool=tmp_path / "orders.spool")

        def burst() -> None:
            n = 0
            try:
                while not stop.is_set():
                    key = f"customer-{n % 5}"
                    sent[key].append(producer.send(topic, n, key=key))
                    n += 1
                    time.sleep(0.005)
            except BaseException as exc:  # surfaced below: a send must never fail
                errors.append(exc)

        sender = threading.Thread(target=burst)
        sender.start()
        try:
            time.sleep(2)
            node.stop()
            time.sleep(OUTAGE)
            status = producer.spool
            assert status is not None and status.pending > 0, status
            node.start()
            time.sleep(2)
        finally:
            stop.set()
            sender.join()
        assert errors == []
        deadline = time.monotonic() + 120
        while producer.spool.pending and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.1)
        status = producer.spool
        producer.close()
    got: dict[str, list[str]] = defaultdict(list)
    with mqkit.connect(node.url) as broker, broker.consumer(topic, group=group) as consumer:
        while (message := consumer.receive(timeout=3.0)) is not None:
            got[message.key or ""].append(message.id)
            message.ack()
    total = sum(len(ids) for ids in sent.values())
    received = sum(len(ids) for ids in got.values())
    print(
        f"\nspool through a {OUTAGE:.0f} s RabbitMQ stop: {total} sent, {received} "
        f"received, {status}"
    )
    for key, ids in sent.items():
        first = list(dict.fromkeys(got[key]))  # a repeat (same id) counts once, where it came first
        assert first == ids, f"{key}: lost or out of order"
