"""``send(message_id=...)``: a message sent again keeps the id it was given."""

from __future__ import annotations

import asyncio

import pytest

import mqkit
import mqkit.aio
from mqkit.message import new_message_id


def test_send_keeps_the_given_id(tmp_db: str, topic: str, group: str) -> None:
    mid = new_message_id()
    with mqkit.connect(tmp_db) as broker:
        broker.declare(topic, group=group)
        with broker.producer() as producer:
            assert producer.send(topic, {"n": 1}, message_id=mid) == mid
            assert producer.send(topic, {"n": 2}, message_id=mid) == mid  # a copy, same id
            other = producer.send(topic, {"n": 3})
        assert other != mid
        with broker.consumer(topic, group=group) as consumer:
            got = []
            for _ in range(3):
                message = consumer.receive(timeout=5)
                assert message is not None
                got.append((message.id, message.value["n"]))
                message.ack()
    assert got == [(mid, 1), (mid, 2), (other, 3)]


@pytest.mark.parametrize("bad", ["", "abc", "X" * 32, "0" * 31 + "G", " " + "0" * 31, 7])
def test_a_malformed_id_is_refused_before_sending(tmp_db: str, topic: str, bad: object) -> None:
    with (
        mqkit.connect(tmp_db) as broker,
        broker.producer() as producer,
        pytest.raises(ValueError, match="32 lowercase hex"),
    ):
        producer.send(topic, 1, message_id=bad)  # type: ignore[arg-type]


def test_async_send_keeps_the_given_id(tmp_db: str, topic: str, group: str) -> None:
    mid = new_message_id()

    async def main() -> str:
        async with mqkit.aio.connect(tmp_db) as broker:
            await broker.declare(topic, group=group)
            async with broker.producer() as producer:
                assert await producer.send(topic, "x", message_id=mid) == mid
            async with broker.consumer(topic, group=group) as consumer:
                message = await consumer.receive(timeout=5)
                assert message is not None
                await message.ack()
                return message.id

    assert asyncio.run(main()) == mid
