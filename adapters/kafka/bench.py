"""Throughput: mqkit's Kafka adapter against raw kafka-python, same broker, same run.

    python adapters/kafka/bench.py [--url kafka://127.0.0.1:39092] [--count 20000] [--size 100]

Prints messages/s for producing (send everything, then flush) and consuming (receive and ack
every message) with the raw client and with mqkit, and the ratio mqkit/raw. Consumer timings
start once the group is joined. The raw consumer commits once per poll batch (the usual
manual-commit loop); mqkit is measured with ``ack_commit=sync`` (each ack confirmed by a
commit before it returns; the default) and ``ack_commit=async`` (commits batched in the
background). A benchmark, not a test: numbers depend on the machine and the broker.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from typing import Any

from kafka import KafkaConsumer, KafkaProducer  # type: ignore[import-untyped]

import mqkit


def raw_produce(bootstrap: str, topic: str, count: int, body: bytes) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    started = time.perf_counter()
    for i in range(count):
        producer.send(topic, value=body, key=f"k{i % 16}".encode())
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return count / elapsed


def mqkit_produce(url: str, topic: str, count: int, body: bytes) -> float:
    with mqkit.connect(url, serializer="bytes") as broker:
        producer = broker.producer()
        producer.send(topic, body, key="warm-up")  # topic creation is not timed
        producer.flush()
        started = time.perf_counter()
        for i in range(count):
            producer.send(topic, body, key=f"k{i % 16}")
        producer.flush()
        elapsed = time.perf_counter() - started
        producer.close()
    return count / elapsed


def raw_consume(bootstrap: str, topic: str, count: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(timeout_ms=100, max_records=1)
        if consumer.assignment():
            consumer.seek_to_beginning()
    got = 0
    started = time.perf_counter()
    while got < count:
        batch: dict[Any, list[Any]] = consumer.poll(timeout_ms=1000)
        for records in batch.values():
            got += len(records)
        if batch:
            consumer.commit()
    elapsed = time.perf_counter() - started
    consumer.close()
    return got / elapsed


def mqkit_consume(url: str, topic: str, count: int, ack_commit: str) -> float:
    with mqkit.connect(url, serializer="bytes") as broker:
        consumer = broker.consumer(
            topic, group=f"bench-mqkit-{uuid.uuid4().hex[:8]}", ack_commit=ack_commit
        )
        got = 0
        started = time.perf_counter()
        while got < count:
            message = consumer.receive(timeout=10)
            if message is None:
                raise SystemExit(f"only {got} of {count} messages arrived")
            message.ack()
            got += 1
        elapsed = time.perf_counter() - started
        consumer.close()
    return got / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MQKIT_TEST_KAFKA_URL",
                                                        "kafka://127.0.0.1:9092"))
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    bootstrap = args.url.split("://", 1)[1].split("?", 1)[0]
    body = os.urandom(args.size)
    topic_raw = f"bench-raw-{uuid.uuid4().hex[:8]}"
    topic_mq = f"bench-mqkit-{uuid.uuid4().hex[:8]}"
    # mqkit creates both topics the same way (3 partitions) so the comparison is fair.
    with mqkit.connect(args.url) as broker:
        broker.backend.ensure_topics([topic_raw, topic_mq])  # type: ignore[attr-defined]

    print(f"broker {args.url}: {args.count} messages of {args.size} bytes, 3 partitions")
    rows = []
    raw = raw_produce(bootstrap, topic_raw, args.count, body)
    ours = mqkit_produce(args.url, topic_mq, args.count, body)
    rows.append(("produce (send all + flush)", raw, ours))
    raw = raw_consume(bootstrap, topic_raw, args.count)
    ours = mqkit_consume(args.url, topic_mq, args.count, "async")
    rows.append(("consume + ack, ack_commit=async", raw, ours))
    ours = mqkit_consume(args.url, topic_mq, min(args.count, 2000), "sync")
    rows.append(("consume + ack, ack_commit=sync", raw, ours))
    print(f"{'':34} {'raw kafka-python':>18} {'mqkit':>12} {'ratio':>7}")
    for name, raw_rate, our_rate in rows:
        print(f"{name:34} {raw_rate:>14,.0f} /s {our_rate:>10,.0f} /s {our_rate / raw_rate:>7.2f}")


if __name__ == "__main__":
    main()
