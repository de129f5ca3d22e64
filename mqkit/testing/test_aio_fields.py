"""Standard fields, typed headers, decode by content type, request/reply and typed payloads
on the asyncio API, on every configured backend (on a loop that fails when blocked)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import gzip
import uuid
from collections.abc import Mapping
from decimal import Decimal

import pytest

from mqkit import DecodeError, DeliveryTimeout, aio
from mqkit.testing.aio import collect, run
from mqkit.testing.test_fields import TYPED_HEADERS
from mqkit.testing.util import ARRIVAL


def test_async_standard_fields_round_trip(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                sent = await producer.send(
                    topic, {"n": 1}, key="k-1", correlation_id="corr-1", reply_to="replies.here"
                )
                await producer.send(topic, {"n": 2}, key="k-1")
            first, second = await collect(consumer, 2)
            assert first.value == {"n": 1} and first.id == sent
            assert first.content_type == "application/json"
            assert first.correlation_id == "corr-1"
            assert first.reply_to == "replies.here"
            assert first.content_encoding is None
            assert dict(first.headers) == {}
            assert second.correlation_id is None and second.reply_to is None
            assert isinstance(first.metadata, Mapping)
            assert first.copy_fields()["correlation_id"] == "corr-1"

    run(main)


def test_async_headers_keep_their_types(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer() as producer:
                await producer.send(topic, "x", headers=TYPED_HEADERS)
            [message] = await collect(consumer, 1)
            assert dict(message.headers) == TYPED_HEADERS
            for name, value in TYPED_HEADERS.items():
                assert type(message.headers[name]) is type(value), name

    run(main)


def test_async_bodies_decode_by_their_content_type(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)
            async with broker.producer(serializer="text") as text:
                await text.send(topic, "plain text, not JSON", key="k")
            async with broker.producer(serializer="bytes") as raw:
                await raw.send(topic, b"\x00\xff binary", key="k")
                await raw.send(
                    topic,
                    gzip.compress(b'{"zipped":true}'),
                    key="k",
                    content_type="application/json",
                    content_encoding="gzip",
                )
            got = await collect(consumer, 3)
            assert [m.error for m in got] == [None, None, None]
            assert [m.value for m in got] == [
                "plain text, not JSON",
                b"\x00\xff binary",
                {"zipped": True},
            ]
            assert got[0].content_type == "text/plain; charset=utf-8"
            assert got[1].content_type == "application/octet-stream"
            assert got[2].content_encoding == "gzip"

    run(main)


def test_async_argument_errors_raise_from_send(url: str, topic: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker, broker.producer() as producer:
            for name in ("content-type", "Correlation-Id", "reply-to"):
                with pytest.raises(ValueError, match="standard field"):
                    await producer.send(topic, 1, headers={name: "x"})
            with pytest.raises(ValueError, match="NaN"):
                await producer.send(topic, {"x": float("nan")})
            with pytest.raises(TypeError, match="not JSON"):
                await producer.send(topic, object())

    run(main)


def test_async_request_reply(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group)

            async def serve() -> None:
                async with broker.producer() as replies:
                    async for request in consumer:
                        await replies.reply(request, {"echo": request.value, "by": "server"})
                        await replies.flush()
                        await request.ack()

            server = asyncio.create_task(serve())
            try:
                async with broker.producer() as client:
                    answers = await asyncio.gather(
                        *(client.request(topic, {"q": n}, timeout=ARRIVAL) for n in range(3))
                    )
            finally:
                await consumer.close()
                await server
            assert [a.value for a in answers] == [
                {"echo": {"q": n}, "by": "server"} for n in range(3)
            ]
            assert len({a.correlation_id for a in answers}) == 3
            assert all(a.settled == "ack" for a in answers)

    run(main)


def test_async_request_without_a_replier_times_out(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            await broker.consumer(topic, group=group)  # someone receives, nobody replies
            async with broker.producer() as client:
                with pytest.raises(DeliveryTimeout, match="no reply"):
                    await client.request(topic, 1, timeout=1.0)

    run(main)


class Status(enum.Enum):
    NEW = "new"
    PAID = "paid"


@dataclasses.dataclass
class Line:
    sku: str
    quantity: int


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    placed: dt.datetime
    total: Decimal
    status: Status
    lines: list[Line]
    note: str | None = None


ORDER = Order(
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    placed=dt.datetime(2026, 1, 31, 12, 0, tzinfo=dt.UTC),
    total=Decimal("12.50"),
    status=Status.PAID,
    lines=[Line("a-1", 2)],
)


def test_async_typed_payloads_round_trip_and_validate(url: str, topic: str, group: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as broker:
            consumer = await broker.consumer(topic, group=group, model=Order)
            async with broker.producer() as producer:
                await producer.send(topic, ORDER, key="o")
                await producer.send(topic, {"id": "not an order"}, key="o")
            good, bad = await collect(consumer, 2)
            assert good.error is None and good.value == ORDER
            assert good.body == (
                b'{"id":"12345678-1234-5678-1234-567812345678",'
                b'"placed":"2026-01-31T12:00:00+00:00","total":"12.50","status":"paid",'
                b'"lines":[{"sku":"a-1","quantity":2}],"note":null}'
            )
            assert isinstance(bad.error, DecodeError)
            assert "Order" in str(bad.error)
            with pytest.raises(DecodeError):
                _ = bad.value

    run(main)
