"""Throughput of the sync API and of ``mqkit.aio`` side by side on one backend.

    python examples/aio_vs_sync.py [URL] [COUNT]

Sends COUNT small JSON messages (send, then one flush), then receives and acks them, with each
API in turn on a fresh topic; prints messages per second for each phase. The async consumer
runs one receive/ack loop, or several tasks sharing one consumer.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import mqkit
from mqkit import aio


def sync_run(url: str, count: int) -> tuple[float, float]:
    topic, group = f"bench-{uuid.uuid4().hex[:8]}", "bench"
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            start = time.perf_counter()
            for i in range(count):
                producer.send(topic, {"n": i}, key=f"k{i % 16}")
            producer.flush()
            sent = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(count):
            message = consumer.receive(timeout=30)
            assert message is not None
            message.ack()
        return sent, time.perf_counter() - start


async def async_run(url: str, count: int, read_ahead: int, tasks: int = 1) -> tuple[float, float]:
    topic, group = f"bench-{uuid.uuid4().hex[:8]}", "bench"
    async with aio.connect(url) as broker:
        consumer = await broker.consumer(topic, group=group, read_ahead=read_ahead)
        async with broker.producer() as producer:
            start = time.perf_counter()
            for i in range(count):
                await producer.send(topic, {"n": i}, key=f"k{i % 16}")
            await producer.flush()
            sent = time.perf_counter() - start
        left = count

        async def work() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                message = await consumer.receive(timeout=30)
                assert message is not None
                await message.ack()

        start = time.perf_counter()
        await asyncio.gather(*(work() for _ in range(tasks)))
        return sent, time.perf_counter() - start


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "memory://"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    rows = [("sync", sync_run(url, count))]
    for ahead, tasks in ((0, 1), (16, 1), (16, 8)):
        name = f"async read_ahead={ahead} tasks={tasks}"
        rows.append((name, asyncio.run(async_run(url, count, ahead, tasks))))
    print(f"{url}  {count} messages")
    print(f"{'api':<32}{'send msg/s':>12}{'receive+ack msg/s':>20}")
    for name, (sent, received) in rows:
        print(f"{name:<32}{count / sent:>12.0f}{count / received:>20.0f}")


if __name__ == "__main__":
    main()
