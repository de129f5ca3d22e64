"""The conformance cases on the asyncio API (``mqkit.aio``), on every configured backend.

Each case runs on a loop in debug mode that fails the test if any callback holds the loop
longer than 50 ms (:func:`mqkit.testing.aio.run`): the bridge must never block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict

import pytest

import mqkit
from mqkit import ClosedError, DecodeError, MessageStateError, aio
from mqkit.testing.aio import assert_quiet, collect, run
from mqkit.testing.util import ARRIVAL
from mqkit.testing.util import collect as sync_collect


def test_async_round_trip_keeps_value_key_headers_and_metadata(
    url: str, topic: str, group: str
) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                before = time.time()
                sent_id = await producer.send(
                    topic, {"order": 1, "items": ["a", "b"]}, key="order-1", headers={"t": "a"}
                )
                await producer.flush(timeout=ARRIVAL)
            [message] = await collect(consumer, 1, ack=False)
            assert message.value == {"order": 1, "items": ["a", "b"]}
            assert message.body == b'{"order":1,"items":["a","b"]}'
            assert message.key == "order-1"
            assert dict(message.headers) == {"t": "a"}
            assert message.id == sent_id
            assert message.topic == topic
            assert message.attempt == 1
            assert message.error is None
            assert abs(message.timestamp - before) < 60
            await message.ack()
            assert message.settled == "ack"
            await assert_quiet(consumer)

    run(main)


def test_async_iteration_and_two_groups(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            first = await broker.consumer(topic, group=group + "-a")
            second = await broker.consumer(topic, group=group + "-b")
            async with broker.producer() as producer:
                for i in range(20):
                    await producer.send(topic, i)
            got: list[int] = []
            async with asyncio.timeout(ARRIVAL):
                async for message in first:
                    got.append(message.value)
                    await message.ack()
                    if len(got) == 20:
                        break
            assert sorted(got) == list(range(20))
            assert sorted(m.value for m in await collect(second, 20)) == list(range(20))
            await assert_quiet(first)
            await assert_quiet(second)

    run(main)


def test_async_members_of_one_group_share_without_overlap(url: str, topic: str, group: str) -> None:
    total = 60
    received: list[list[int]] = [[], []]

    async def main() -> None:
        async with aio.connect(url) as broker:
            members = [await broker.consumer(topic, group=group) for _ in received]
            done = asyncio.Event()

            async def member(n: int) -> None:
                while not done.is_set():
                    message = await members[n].receive(timeout=0.2)
                    if message is None:
                        continue
                    received[n].append(message.value)
                    if sum(map(len, received)) >= total:
                        done.set()
                    await asyncio.sleep(0.01)  # a slow handler, so the other member gets some
                    await message.ack()

            tasks = [asyncio.create_task(member(n)) for n in range(len(members))]
            async with broker.producer() as producer:
                for i in range(total):
                    await producer.send(topic, i, key=f"k{i % 12}")
            try:
                await asyncio.wait_for(done.wait(), ARRIVAL * 2)
            finally:
                done.set()
                await asyncio.gather(*tasks)

    run(main)
    a, b = received
    assert sorted(a + b) == list(range(total)), "every message once across the group"
    assert not set(a) & set(b), "no message went to both members"
    assert a and b, f"both members got a share (a={len(a)}, b={len(b)})"


def test_async_per_key_order_with_concurrent_handlers(url: str, topic: str, group: str) -> None:
    keys, per_key = 4, 20
    seen: dict[str, list[int]] = defaultdict(list)

    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                for seq in range(per_key):
                    for k in range(keys):
                        await producer.send(topic, seq, key=f"key-{k}")
            for message in await collect(consumer, keys * per_key):
                seen[message.key or ""].append(message.value)

    run(main)
    assert sorted(seen) == [f"key-{k}" for k in range(keys)]
    for key, values in seen.items():
        assert values == list(range(per_key)), f"{key} out of order: {values}"


def test_async_nack_redelivers_with_attempt_incremented(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                sent = await producer.send(topic, "retry me", headers={"h": "v"})
            [first] = await collect(consumer, 1, ack=False)
            assert (first.id, first.attempt) == (sent, 1)
            await first.nack()
            [second] = await collect(consumer, 1, ack=False)
            assert (second.id, second.attempt, second.value) == (sent, 2, "retry me")
            assert dict(second.headers) == {"h": "v"}
            await second.ack()
            with pytest.raises(MessageStateError):
                await second.nack()
            await assert_quiet(consumer)

    run(main)


def test_async_nack_without_requeue_drops_and_keeps_key_order(
    url: str, topic: str, group: str
) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                await producer.send(topic, "poison", key="k")
                for i in range(3):
                    await producer.send(topic, i, key="k")
            [poison] = await collect(consumer, 1, ack=False)
            assert poison.value == "poison"
            await poison.nack(requeue=False)
            if broker.features.key_order_on_nack:
                [one] = await collect(consumer, 1, ack=False)
                assert (one.value, one.attempt) == (0, 1)
                await one.nack()
                order = [(m.value, m.attempt) for m in await collect(consumer, 3)]
                assert order == [(0, 2), (1, 1), (2, 1)]
            else:
                assert sorted(m.value for m in await collect(consumer, 3)) == [0, 1, 2]
            await assert_quiet(consumer)

    run(main)


def test_async_delayed_nack_does_not_block_the_loop(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            if not broker.features.delayed_redelivery:
                pytest.skip("backend declares delayed_redelivery=False (retry topics stand in)")
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                await producer.send(topic, "later")
            [message] = await collect(consumer, 1, ack=False)
            nacked_at = time.monotonic()
            await message.nack(delay=2.0)
            [again] = await collect(consumer, 1)
            assert again.id == message.id and again.attempt == 2
            assert time.monotonic() - nacked_at >= 1.5

    run(main)


def test_async_close_gives_back_unsettled_and_keeps_acked(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            first = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                ids = [await producer.send(topic, i) for i in range(6)]
            acked = await collect(first, 2)
            held = await collect(first, 2, ack=False)
            assert len(acked) == 2 and len(held) == 2
            await first.close()
            with pytest.raises(ClosedError, match="given back"):
                await held[0].ack()
            second = await broker.consumer(topic, group=group)
            again = await collect(second, 4)
            assert sorted(m.id for m in again) == sorted(set(ids) - {m.id for m in acked})
            await assert_quiet(second)

    run(main)


def test_async_batches_received_and_acked_at_once_do_not_come_back(
    url: str, topic: str, group: str
) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            first = await broker.consumer(topic, group=group)
            other = await broker.consumer(topic, group=group + "-other")
            async with broker.producer() as producer:
                ids = [await producer.send(topic, i) for i in range(10)]
            acked: list[aio.AsyncMessage] = []
            end = time.monotonic() + ARRIVAL
            while len(acked) < 6 and time.monotonic() < end:
                batch = await first.receive_many(6 - len(acked), timeout=1.0)
                assert len(batch) <= 6 - len(acked)
                await first.ack_many(batch)
                assert all(message.settled == "ack" for message in batch)
                acked += batch
            assert len(acked) == 6
            with pytest.raises(MessageStateError):
                await first.ack_many(acked[:1])
            foreign = await collect(other, 1, ack=False)
            with pytest.raises(ValueError, match="not received from this consumer"):
                await first.ack_many(foreign)
            assert foreign[0].settled is None
            held = await collect(first, 1, ack=False)
            assert len(held) == 1
            await first.close()
            with pytest.raises(ClosedError, match="given back"):
                await first.ack_many(held)
            second = await broker.consumer(topic, group=group)
            rest = await collect(second, 4)
            assert sorted(m.id for m in rest) == sorted(set(ids) - {m.id for m in acked})
            await assert_quiet(second)
            await other.close()

    run(main)


def test_async_cancelled_receive_leaves_the_message_for_the_next(
    url: str, topic: str, group: str
) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            waiting = asyncio.create_task(consumer.receive())
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await consumer.receive(timeout=0.05) is None  # times out, nothing lost
            async with broker.producer() as producer:
                sent = await producer.send(topic, "kept")
            [message] = await collect(consumer, 1)
            assert message.id == sent
            await assert_quiet(consumer)

    run(main)


def test_async_cancelled_ack_still_acks(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                await producer.send(topic, "ack me")
            [message] = await collect(consumer, 1, ack=False)
            acking = asyncio.create_task(message.ack())
            await asyncio.sleep(0)  # the ack is under way
            acking.cancel()
            # A driver that acks without waiting has acked inline, before the cancel.
            with contextlib.suppress(asyncio.CancelledError):
                await acking
            assert message.settled == "ack"
            await consumer.close()  # waits for the ack, then gives back what is unsettled
            second = await broker.consumer(topic, group=group)
            await assert_quiet(second, wait=3.0)

    run(main)


def test_async_undecodable_payload_is_flagged_not_lost(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer(serializer="bytes") as raw, broker.producer() as js:
                # labelled JSON, so the consumer must decode it as JSON (and fail)
                await raw.send(topic, b"\xff\xfe not", key="k", content_type="application/json")
                await raw.flush()
                await js.send(topic, {"ok": True}, key="k")
            bad, good = await collect(consumer, 2)
            assert isinstance(bad.error, DecodeError)
            assert bad.body == b"\xff\xfe not"
            with pytest.raises(DecodeError):
                _ = bad.value
            assert good.error is None and good.value == {"ok": True}

    run(main)


def test_async_closed_objects_raise_clear_errors(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        broker = await aio.connect(url)
        producer = await broker.producer()
        consumer = await broker.consumer(topic, group=group)
        await producer.send(topic, 1)
        await producer.close()
        await producer.close()  # idempotent
        with pytest.raises(ClosedError, match="producer"):
            await producer.send(topic, 2)
        [message] = await collect(consumer, 1, ack=False)
        await message.ack()
        with pytest.raises(MessageStateError):
            await message.ack()
        await consumer.close()
        with pytest.raises(ClosedError, match="consumer"):
            await consumer.receive(timeout=0)
        await broker.close()
        with pytest.raises(ClosedError, match="broker"):
            await broker.producer()

    run(main)


def test_async_close_ends_a_waiting_receive_and_iteration(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)

            async def drain() -> list[aio.AsyncMessage]:
                return [m async for m in consumer]

            waiting = asyncio.create_task(consumer.receive())
            iterating = asyncio.create_task(drain())
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await consumer.close()
            assert await asyncio.wait_for(waiting, 5) is None
            assert await asyncio.wait_for(iterating, 5) == []
            assert time.monotonic() - started < 5

    run(main)


def test_async_flush_confirms_a_burst(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group, read_ahead=8)
            producer = await broker.producer()
            ids = {await producer.send(topic, {"n": i}, key=f"k{i % 7}") for i in range(500)}
            await producer.flush(timeout=ARRIVAL)
            await producer.close()
            got = await collect(consumer, 500, deadline=ARRIVAL * 2)
            assert {m.id for m in got} == ids
            assert len(got) == 500

    run(main)


def test_async_and_sync_clients_see_each_other(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            await asyncio.to_thread(send_sync)
            [message] = await collect(consumer, 1)
            assert message.value == {"from": "sync"} and message.key == "k"
            await consumer.close()  # the group's only member is now the sync one
            async with broker.producer() as producer:
                sent = await producer.send(topic, {"from": "async"}, key="k")
            [back] = await asyncio.to_thread(receive_sync)
            assert (back.id, back.value, back.key) == (sent, {"from": "async"}, "k")

    def send_sync() -> None:
        with mqkit.connect(url) as sync_broker, sync_broker.producer() as producer:
            producer.send(topic, {"from": "sync"}, key="k")

    def receive_sync() -> list[mqkit.Message]:
        with mqkit.connect(url) as sync_broker:
            return sync_collect(sync_broker.consumer(topic, group=group), 1)

    run(main)


def test_async_receive_with_zero_timeout_never_waits_and_gets_messages(
    url: str, topic: str, group: str
) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                sent = await producer.send(topic, "polled")
            got = None
            end = time.monotonic() + ARRIVAL
            while got is None and time.monotonic() < end:
                got = await consumer.receive(timeout=0)
                await asyncio.sleep(0.05)
            assert got is not None and got.id == sent
            await got.ack()

    run(main)
