"""Throughput of mqkit's ActiveMQ adapter against raw stomp.py, same broker, same run.

    python adapters/activemq/bench.py [--url stomp://127.0.0.1:61613] [--count 5000] [--size 256]

Both sides do the same work: persistent SENDs to the virtual topic, each with a receipt, at most
1000 unconfirmed at a time, and the run ends when every receipt came back (mqkit: ``flush``);
then the group's queue is drained with ``client-individual`` acks, prefetch 100, a third with
each ack confirmed by a receipt before the next message (mqkit's default, ``confirm_acks=true``)
and a third with acks sent without waiting (``confirm_acks=false``). Raw confirmed acks are
measured on a plain stomp.py socket and on one with the TCP_QUICKACK/TCP_NODELAY tuning mqkit
applies (see ``mqkit_activemq.link``). A benchmark prints numbers; it asserts nothing.

The standard mqkit-versus-raw comparison (throughput, latency, several topics) is
``mqkit bench --url stomp://…``, whose raw side is ``mqkit_activemq.rawbench``; this script
adds the ack modes and the plain-socket row that ``mqkit bench`` does not measure.
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import stomp  # type: ignore[import-untyped]
from mqkit_activemq import group_destination, topic_destination
from mqkit_activemq.link import tune_socket

import mqkit

WINDOW = 1000
PREFETCH = 100


class _Raw:
    """A bare stomp.py connection with just enough listener to count receipts and messages."""

    def __init__(self, url: str, tuned: bool = False) -> None:
        parts = urlsplit(url)
        self.conn = stomp.Connection12(
            [(parts.hostname or "127.0.0.1", parts.port or 61613)], auto_decode=False
        )
        if tuned:  # the TCP_QUICKACK/TCP_NODELAY tuning mqkit applies to its sockets
            tune_socket(self.conn.transport)
        self.receipts = threading.Semaphore(0)
        self.messages: queue.Queue[Any] = queue.Queue()
        self.conn.set_listener("bench", self)
        self.conn.connect(parts.username, parts.password, wait=True)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.release()

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame)

    def close(self) -> None:
        self.conn.disconnect()


def raw_produce(url: str, topic: str, count: int, body: bytes) -> float:
    raw = _Raw(url)
    window = threading.Semaphore(WINDOW)

    def confirmed(frame: Any) -> None:
        window.release()

    raw.on_receipt = confirmed  # type: ignore[method-assign]
    started = time.perf_counter()
    for i in range(count):
        window.acquire()
        raw.conn.send(
            topic_destination(topic), body,
            headers={"persistent": "true", "receipt": f"r{i}", "mqkit.id": uuid.uuid4().hex},
        )
    for _ in range(WINDOW):
        window.acquire()
    elapsed = time.perf_counter() - started
    raw.close()
    return count / elapsed


def raw_consume(
    url: str, topic: str, group: str, count: int, confirm: bool, tuned: bool = False
) -> float:
    raw = _Raw(url, tuned)
    raw.conn.subscribe(
        group_destination(topic, group), id="bench", ack="client-individual",
        headers={"activemq.prefetchSize": str(PREFETCH)},
    )
    started = time.perf_counter()
    for i in range(count):
        frame = raw.messages.get(timeout=60)
        if confirm or i == count - 1:  # unconfirmed: still wait for the last one
            raw.conn.ack(frame.headers["ack"], receipt=f"a{i}")
            raw.receipts.acquire()
        else:
            raw.conn.ack(frame.headers["ack"])
    elapsed = time.perf_counter() - started
    raw.close()
    return count / elapsed


def mqkit_produce(url: str, topic: str, count: int, body: bytes) -> float:
    with mqkit.connect(url, serializer="bytes") as broker, broker.producer() as producer:
        started = time.perf_counter()
        for _ in range(count):
            producer.send(topic, body)
        producer.flush()
        return count / (time.perf_counter() - started)


def mqkit_consume(url: str, topic: str, group: str, count: int, confirm: bool) -> float:
    with mqkit.connect(url, serializer="bytes") as broker:
        consumer = broker.consumer(topic, group=group, prefetch=PREFETCH, confirm_acks=confirm)
        started = time.perf_counter()
        for _ in range(count):
            message = consumer.receive(timeout=60)
            assert message is not None, "a message went missing"
            message.ack()
        return count / (time.perf_counter() - started)


def create_group(url: str, topic: str, group: str) -> None:
    """Subscribe once so the group's queue exists before anything is sent."""
    with mqkit.connect(url) as broker:
        broker.consumer(topic, group=group).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("MQKIT_TEST_ACTIVEMQ_URL", "stomp://127.0.0.1:61613")
    )
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="best of N rounds")
    args = parser.parse_args()
    body = os.urandom(args.size)
    results: dict[str, list[float]] = {}

    def record(name: str, run: Callable[..., float], *run_args: Any) -> None:
        results.setdefault(name, []).append(run(*run_args))

    third = args.count // 3
    for _ in range(args.rounds):
        for side in ("raw", "mqkit"):
            topic, group = f"bench-{uuid.uuid4().hex[:8]}", "bench"
            create_group(args.url, topic, group)
            produce = raw_produce if side == "raw" else mqkit_produce
            consume = raw_consume if side == "raw" else mqkit_consume
            record(f"{side} produce", produce, args.url, topic, args.count, body)
            record(f"{side} confirmed", consume, args.url, topic, group, third, True)
            record(f"{side} unconfirmed", consume, args.url, topic, group, third, False)
            if side == "raw":
                record("raw tuned confirmed", raw_consume, args.url, topic, group, third, 1, 1)
            else:
                record("mqkit rest", consume, args.url, topic, group, third, True)
            rest = args.count - 3 * third
            if rest:
                consume(args.url, topic, group, rest, False)

    def best(name: str) -> float:
        return max(results[name])

    print(f"ActiveMQ at {args.url.split('@')[-1]}: {args.count} messages of {args.size} bytes, "
          f"persistent, best of {args.rounds} round(s), msg/s")
    print(f"{'':44}{'raw stomp.py':>13}{'mqkit':>9}{'mqkit/raw':>11}")
    rows = [
        ("produce (receipts, 1000 in flight)", "raw produce", "mqkit produce"),
        ("consume, confirmed acks", "raw tuned confirmed", "mqkit confirmed"),
        ("consume, confirmed acks, untuned raw socket", "raw confirmed", "mqkit confirmed"),
        ("consume, unconfirmed acks", "raw unconfirmed", "mqkit unconfirmed"),
    ]
    for label, raw, ours in rows:
        print(f"{label:44}{best(raw):13.0f}{best(ours):9.0f}{best(ours) / best(raw):11.2f}")


if __name__ == "__main__":
    main()
