#!/usr/bin/env python3
"""Consume with one ack per message against ``receive_many`` + ``ack_many``, on each URL given.

For each backend: N persistent messages are sent to a fresh topic, then received back by a
group consumer, once acking each message (``message.ack()``) and once in batches
(``consumer.receive_many(B)`` then ``consumer.ack_many(batch)``); the two modes take turns,
``--repeat`` times each. Prints msg/s and the process's CPU µs per message (all threads), and
the batch ÷ each ratio of the medians. Not run by CI; its numbers are in docs/benchmarks.md.

    python benchmarks/batches.py sqlite:///tmp/b.db "$MQKIT_TEST_RABBITMQ_URL" \\
        "$MQKIT_TEST_KAFKA_URL" "$MQKIT_TEST_KAFKA_URL?driver=confluent"
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import mqkit
from mqkit.config import parse_url


def run(url: str, mode: str, messages: int, batch: int, size: int) -> tuple[float, float]:
    """One run: (msg/s, CPU µs per message) of consuming ``messages`` in ``mode``."""
    body = b"x" * size
    topic = "bench-batches-" + uuid.uuid4().hex[:8]
    with (
        mqkit.connect(url) as broker,
        broker.consumer(topic, group="bench", serializer="bytes") as consumer,
    ):
        with broker.producer(serializer="bytes") as producer:
            for _ in range(messages):
                producer.send(topic, body)
        got = first = 0
        started = cpu = 0.0
        while got < messages:
            if mode == "each":
                message = consumer.receive(timeout=30)
                if message is None:
                    break
                message.ack()
                got += 1
            else:
                received = consumer.receive_many(batch, timeout=30)
                if not received:
                    break
                consumer.ack_many(received)
                got += len(received)
            if not started:  # timed from the first receive on: not the time to subscribe
                started, cpu, first = time.perf_counter(), time.process_time(), got
        if got < messages:
            raise SystemExit(f"{url}: {mode}: {got} of {messages} messages arrived")
        timed = got - first
        elapsed = time.perf_counter() - started
        return timed / elapsed, (time.process_time() - cpu) / timed * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("urls", nargs="+")
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=100, help="receive_many's max_messages")
    p.add_argument("--size", type=int, default=1024, help="body bytes")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print("| backend | ack each: msg/s (CPU µs/msg) | ack_many: msg/s (CPU µs/msg) | ratio |")
    print("|---|--:|--:|--:|")
    for url in args.urls:
        results: dict[str, list[tuple[float, float]]] = {"each": [], "many": []}
        for i in range(args.repeat):
            order = ("each", "many") if i % 2 == 0 else ("many", "each")
            for mode in order:
                results[mode].append(run(url, mode, args.messages, args.batch, args.size))
        rate = {m: statistics.median(r for r, _ in runs) for m, runs in results.items()}
        cpu = {m: statistics.median(c for _, c in runs) for m, runs in results.items()}
        name = parse_url(url).redacted()
        print(
            f"| {name} | {rate['each']:,.0f} ({cpu['each']:.0f}) | "
            f"{rate['many']:,.0f} ({cpu['many']:.0f}) | {rate['many'] / rate['each']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
