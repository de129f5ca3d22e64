"""Throughput: mqkit's RabbitMQ adapter against raw pika, same broker, same run.

    python adapters/rabbitmq/bench.py [--url amqp://guest:guest@127.0.0.1:5672/] \
        [--count 20000] [--size 100]

Prints messages/s for producing (send everything, then wait for every publisher confirm) and
consuming (receive and ack every message, prefetch 16) with raw pika and with mqkit, and the
ratio mqkit/raw. Both sides use persistent messages, a durable topic exchange and a durable
quorum queue (mqkit: the group's shared queue; keyed messages are measured separately, they go
to the group's partition queues). Raw pika publishes with up to 1000 unconfirmed messages on a
SelectConnection and consumes on a BlockingConnection acking in the callback: the way one
would write it by hand. A benchmark, not a test: numbers depend on the machine and the broker.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from mqkit_rabbitmq.rawbench import RawPikaClient

import mqkit
from mqkit.config import parse_url


def raw_run(url: str, count: int, body: bytes) -> tuple[float, float]:
    topic, group = f"bench-raw-{uuid.uuid4().hex[:8]}", "bench"
    client = RawPikaClient(parse_url(url))
    try:
        client.subscribe([topic], group)
        started = time.perf_counter()
        client.produce(topic, (body for _ in range(count)))
        produce = count / (time.perf_counter() - started)
        got = 0

        def on_body(_: bytes) -> None:
            nonlocal got
            got += 1

        started = time.perf_counter()
        client.consume(on_body, lambda: got >= count, time.monotonic() + 300)
        consume = got / (time.perf_counter() - started)
    finally:
        client.close()
    return produce, consume


def mqkit_run(url: str, count: int, body: bytes, keyed: bool) -> tuple[float, float]:
    topic, group = f"bench-mqkit-{uuid.uuid4().hex[:8]}", "bench"
    with mqkit.connect(url, serializer="bytes") as broker:
        consumer = broker.consumer(topic, group=group)
        producer = broker.producer()
        producer.send(topic, body)  # exchange declaration is not timed
        producer.flush()
        started = time.perf_counter()
        for i in range(count):
            producer.send(topic, body, key=f"k{i % 16}" if keyed else None)
        producer.flush()
        produce = count / (time.perf_counter() - started)
        producer.close()
        warm = consumer.receive(timeout=30)
        assert warm is not None
        warm.ack()
        got = 0
        started = time.perf_counter()
        while got < count:
            message = consumer.receive(timeout=30)
            if message is None:
                raise SystemExit(f"mqkit consumer stalled after {got} messages")
            message.ack()
            got += 1
        consume = got / (time.perf_counter() - started)
    return produce, consume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQKIT_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    body = os.urandom(args.size)
    print(f"{args.count} messages of {args.size} bytes, {parse_url(args.url).redacted()}")
    raw_p, raw_c = raw_run(args.url, args.count, body)
    mq_p, mq_c = mqkit_run(args.url, args.count, body, keyed=False)
    key_p, key_c = mqkit_run(args.url, args.count, body, keyed=True)
    print(f"{'':24}{'produce msg/s':>16}{'consume msg/s':>16}")
    print(f"{'raw pika':24}{raw_p:16,.0f}{raw_c:16,.0f}")
    print(f"{'mqkit':24}{mq_p:16,.0f}{mq_c:16,.0f}")
    print(f"{'mqkit, 16 keys':24}{key_p:16,.0f}{key_c:16,.0f}")
    print(f"{'ratio mqkit/raw':24}{mq_p / raw_p:16.2f}{mq_c / raw_c:16.2f}")


if __name__ == "__main__":
    main()
