"""The bridge's own guarantees beyond the conformance cases: back-pressure on a full send
queue, and a send cancelled while waiting for room."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from mqkit import aio
from mqkit.aio import _bridge
from mqkit.client import Producer
from mqkit.testing.aio import assert_quiet, collect, run


def test_a_full_send_queue_waits_and_a_cancelled_waiter_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, topic: str, group: str
) -> None:
    monkeypatch.setattr(_bridge, "MAX_QUEUED", 2)
    # Every send through the sender thread's queue, none inline.
    monkeypatch.setattr(Producer, "_send_nowait", lambda self, message: False)

    async def main() -> None:
        async with aio.connect("memory://bridge-full") as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                sends = [asyncio.create_task(producer.send(topic, n)) for n in range(40)]
                await asyncio.sleep(0)
                sends[39].cancel()  # still waiting for room (or already queued)
                done = await asyncio.gather(*sends, return_exceptions=True)
                await producer.flush()
            cancelled = isinstance(done[39], asyncio.CancelledError)
            ids = [d for d in done if isinstance(d, str)]
            assert len(ids) == 40 - cancelled
            got = await collect(consumer, len(ids))
            assert sorted(m.id for m in got) == sorted(ids)
            assert await consumer.receive(timeout=0.5) is None

    run(main)


def test_a_driver_error_raises_from_the_next_call(topic: str) -> None:
    async def main() -> None:
        async with aio.connect("memory://bridge-error") as broker:
            producer = await broker.producer()

            def broken(message: object) -> None:
                raise RuntimeError("the broker went away")

            producer.sync._driver.send = broken  # type: ignore[method-assign]
            # Not taken inline: to the sender thread, whose error surfaces later.
            producer.sync._driver.send_nowait = lambda message: False  # type: ignore[attr-defined]
            await producer.send(topic, 1)  # queued: the error comes later
            with pytest.raises(RuntimeError, match="went away"):
                await producer.flush()
            await producer.flush()  # reported once

    run(main)


def test_a_tight_send_loop_does_not_hold_the_loop(topic: str, group: str) -> None:
    """20,000 sends in a row on a debug loop: no step over 200 ms, and a ticker keeps ticking."""

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async with aio.connect("memory://bridge-tight") as broker:
            await broker.declare(topic, group=group)
            task = asyncio.create_task(ticker())
            async with broker.producer() as producer:
                for n in range(20_000):
                    await producer.send(topic, n)
            task.cancel()
        return ticks

    # The property here is that a send loop shares the loop at all (every YIELD_EVERY sends);
    # a step of 32 sends in debug mode late in a long test session has been seen at 60-80 ms
    # of CPU, so the bound is looser than the suite's 50 ms.
    assert run(main, slow=0.2) > 100


def test_an_ack_that_would_wait_for_the_store_goes_to_the_settling_thread(
    tmp_path: Path, topic: str, group: str
) -> None:
    """SQLite acks inline unless a lock is taken; then the settling thread waits for it,
    never the loop, and the message is still acked exactly once."""
    url = f"sqlite:///{tmp_path}/busy.db"

    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group, prefetch=1)
            async with broker.producer() as producer:
                await producer.send(topic, "a")
                await producer.send(topic, "b")
            [message] = await collect(consumer, 1, ack=False)
            other = sqlite3.connect(f"{tmp_path}/busy.db")  # another writer, as a process
            other.execute("BEGIN IMMEDIATE")
            acking = asyncio.create_task(message.ack())
            # Leasing "b" needs the database's lock too: the receiving thread waits for it.
            receiving = asyncio.create_task(consumer.receive(timeout=10))
            await asyncio.sleep(0.3)
            assert not acking.done() and not receiving.done()  # threads wait, the loop runs
            other.execute("ROLLBACK")
            other.close()
            await acking
            assert message.settled == "ack"
            second = await receiving
            assert second is not None and second.value == "b"
            await second.ack()
            await consumer.close()
            again = await broker.consumer(topic, group=group)
            await assert_quiet(again, wait=1.0)

    run(main)


def test_receive_ack_and_send_run_inline_on_sqlite(
    monkeypatch: pytest.MonkeyPatch, topic: str, group: str
) -> None:
    """Prefetched rows, acks and sends need no thread hop on the embedded engine."""
    hops: list[str] = []
    original_ask = _bridge.AsyncConsumer._ask

    def ask(self: _bridge.AsyncConsumer) -> None:
        hops.append("receive")
        original_ask(self)

    monkeypatch.setattr(_bridge.AsyncConsumer, "_ask", ask)

    async def main() -> None:
        async with aio.connect("memory://bridge-inline") as broker:
            consumer = await broker.consumer(topic, group=group, prefetch=10)
            async with broker.producer() as producer:
                for n in range(10):
                    await producer.send(topic, n)
                assert producer._queued == 0  # none went to the sender thread
            got = await collect(consumer, 10)
            assert [m.value for m in got] == list(range(10))
            assert consumer._settles_asked == 0  # every ack inline
            assert hops == []  # even the batch was leased inline

    run(main)


def test_a_tight_consume_loop_does_not_hold_the_loop(topic: str, group: str) -> None:
    """Receives and acks answered inline still let other tasks run (every YIELD_EVERY)."""

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async with aio.connect("memory://bridge-tight-consume") as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                for n in range(3000):
                    await producer.send(topic, n)
            task = asyncio.create_task(ticker())
            got = await collect(consumer, 3000)
            task.cancel()
            assert [m.value for m in got] == list(range(3000))
        return ticks

    assert run(main, slow=0.2) > 50
