"""mqkit next to plain AMQP clients (pika, as a Java, Go or Node service would use the broker):
both directions, standard fields, typed headers, existing exchanges and queues, replies to a
plain RPC client. Every assertion is on what the other side really received."""

from __future__ import annotations

import datetime
import decimal
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pika
import pika.adapters.blocking_connection
import pika.exceptions
import pytest
from pika.exchange_type import ExchangeType

import mqkit
from mqkit import Message
from tests.rabbitmq.conftest import delete_group

BlockingChannel = pika.adapters.blocking_connection.BlockingChannel

TYPED: dict[str, Any] = {
    "text": "héllo",
    "count": 7,
    "big": -12345678901,
    "ratio": 1.5,
    "flag": True,
    "off": False,
    "raw": b"\xff\x00",
}


@pytest.fixture
def channel(rabbit_url: str) -> Iterator[BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url.split("?")[0]))
    try:
        yield conn.channel()
    finally:
        conn.close()


@pytest.fixture
def topic(rabbit_url: str) -> Iterator[str]:
    """A fresh topic; its groups (``g1``, ``g2``) and exchange are deleted afterwards."""
    name = f"it-{uuid.uuid4().hex[:10]}"
    yield name
    for group in ("g1", "g2"):
        delete_group(rabbit_url, name, group, 3)


def _receive(consumer: mqkit.Consumer, count: int, deadline: float = 20) -> list[Message]:
    out: list[Message] = []
    end = time.monotonic() + deadline
    while len(out) < count and time.monotonic() < end:
        message = consumer.receive(timeout=0.5)
        if message is not None:
            out.append(message)
            message.ack()
    return out


def _get(channel: BlockingChannel, queue: str, deadline: float = 10) -> tuple[Any, Any, Any]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, props, body
        time.sleep(0.05)
    raise AssertionError(f"nothing arrived on {queue} in {deadline} s")


def test_plain_publish_with_a_natural_routing_key_reaches_every_group(
    rabbit_url: str, channel: BlockingChannel, topic: str
) -> None:
    """The issue's check: a plain publish to exchange ``T`` with routing key ``customer-7``
    reaches each mqkit group of ``T`` with its content type, correlation id, reply-to and typed
    headers, and every key's messages in order."""
    with mqkit.connect(rabbit_url) as broker:
        first = broker.consumer(topic, group="g1", partitions=2)
        second = broker.consumer(topic, group="g2", partitions=3)
        keys = ["customer-7", "customer-8", "order.42", "#weird key*"]
        for n in range(10):
            for key in keys:
                channel.basic_publish(
                    topic,
                    key,
                    json.dumps({"key": key, "n": n}).encode(),
                    pika.BasicProperties(
                        content_type="application/json",
                        correlation_id=f"corr-{key}-{n}",
                        reply_to="replies",
                        message_id=f"{key}/{n}",
                        headers=TYPED,
                    ),
                )
        for consumer in (first, second):
            got = _receive(consumer, 40)
            assert len(got) == 40
            seen: dict[str, list[int]] = defaultdict(list)
            for message in got:
                assert message.error is None
                assert message.key == message.value["key"]
                assert message.content_type == "application/json"
                assert message.correlation_id == f"corr-{message.key}-{message.value['n']}"
                assert message.reply_to == "replies"
                assert message.id == f"{message.key}/{message.value['n']}"
                assert dict(message.headers) == TYPED
                assert {n: type(v) for n, v in message.headers.items()} == {
                    n: type(v) for n, v in TYPED.items()
                }
                assert message.metadata["exchange"] == topic
                assert message.metadata["routing_key"] == message.key
                seen[message.value["key"]].append(message.value["n"])
            assert seen == {key: list(range(10)) for key in keys}
            consumer.close()


def test_plain_consumer_reads_mqkit_messages(
    rabbit_url: str, channel: BlockingChannel, topic: str
) -> None:
    """A plain consumer binds by the business key and reads mqkit's standard fields natively."""
    with mqkit.connect(rabbit_url) as broker:
        broker.consumer(topic, group="g1", partitions=1).close()  # the exchange exists from here
        everything = channel.queue_declare("", exclusive=True).method.queue
        customer = channel.queue_declare("", exclusive=True).method.queue
        assert everything and customer
        channel.queue_bind(everything, topic, routing_key="#")
        channel.queue_bind(customer, topic, routing_key="customer-7")
        with broker.producer() as producer:
            sent = producer.send(
                topic,
                {"total": 12.5},
                key="customer-7",
                headers=TYPED,
                correlation_id="c-1",
                reply_to="answers",
            )
            other = producer.send(topic, {"total": 1}, key="customer-8")
            unkeyed = producer.send(topic, "no key")
        with broker.producer(serializer="bytes") as raw:
            binary = raw.send(topic, b"\x00\xff\x10", key="customer-7")

        method, props, body = _get(channel, customer)
        assert json.loads(body) == {"total": 12.5}
        assert method.routing_key == "customer-7"
        assert props.content_type == "application/json"
        assert props.content_encoding is None
        assert props.message_id == sent
        assert props.correlation_id == "c-1"
        assert props.reply_to == "answers"
        assert props.delivery_mode == 2
        assert abs(props.timestamp - time.time()) < 60
        for name, value in TYPED.items():
            got = props.headers[name]
            # pika reads 64-bit integers as its own int subclass
            assert got == value and isinstance(got, type(value)), name
            assert isinstance(got, bool) == isinstance(value, bool), name
        method, props, body = _get(channel, customer)
        assert (body, props.message_id) == (b"\x00\xff\x10", binary)
        assert props.content_type == "application/octet-stream"
        assert channel.basic_get(customer, auto_ack=True)[0] is None  # only customer-7's

        ids = [_get(channel, everything)[1].message_id for _ in range(4)]
        assert ids == [sent, other, unkeyed, binary]


def test_foreign_header_types_follow_one_rule(
    rabbit_url: str, channel: BlockingChannel, topic: str
) -> None:
    """Decimal, timestamp, void, table and array headers arrive as text by the documented rule;
    ``metadata`` has the values and the other properties as received; no message id gives a
    stable one."""
    stamp = datetime.datetime(2026, 1, 2, 3, 4, 5)
    with mqkit.connect(rabbit_url, serializer="text") as broker:
        consumer = broker.consumer(topic, group="g1", partitions=1)
        channel.basic_publish(
            topic,
            "legacy",
            b"hello",
            pika.BasicProperties(
                headers={
                    "price": decimal.Decimal("12.50"),
                    "when": stamp,
                    "nothing": None,
                    "table": {"a": 1, "b": [b"x", b"\xff"]},
                    "list": [1, "two"],
                },
                app_id="billing",
                type="invoice",
                priority=3,
                expiration="60000",
                timestamp=1_700_000_000,
            ),
        )
        [message] = _receive(consumer, 1)
        assert message.value == "hello"
        assert dict(message.headers) == {
            "price": "12.5",  # pika sends Decimal("12.50") normalized
            "when": "2026-01-02T03:04:05+00:00",
            "nothing": "",
            "table": '{"a":1,"b":["x","/w=="]}',
            "list": '[1,"two"]',
        }
        meta = message.metadata
        assert meta["headers"]["price"] == decimal.Decimal("12.5")
        assert meta["headers"]["when"] == stamp.replace(tzinfo=datetime.UTC)
        assert (meta["app_id"], meta["type"], meta["priority"]) == ("billing", "invoice", 3)
        assert (meta["expiration"], meta["delivery_mode"]) == ("60000", None)
        assert meta["redelivered"] is False and meta["routing_key"] == "legacy"
        assert message.timestamp == 1_700_000_000.0
        assert message.id and message.key == "legacy" and message.content_type is None


def test_existing_direct_exchange_with_binding_keys(
    rabbit_url: str, channel: BlockingChannel, topic: str
) -> None:
    """Another team's direct exchange is used as it is; the group takes the routing keys it
    names, in per-key order; mqkit's producer publishes to it too."""
    channel.exchange_declare(topic, exchange_type=ExchangeType("direct"), durable=True)
    try:
        with mqkit.connect(rabbit_url) as broker:
            consumer = broker.consumer(
                topic, group="g1", partitions=2, binding_keys="created, paid"
            )
            for n in range(5):
                for key in ("created", "paid", "shipped"):
                    channel.basic_publish(topic, key, json.dumps(n).encode())
            with broker.producer() as producer:
                mine = producer.send(topic, 99, key="paid")
            got = _receive(consumer, 11)
            by_key: dict[str | None, list[int]] = defaultdict(list)
            for message in got:
                by_key[message.key].append(message.value)
            assert by_key == {"created": [0, 1, 2, 3, 4], "paid": [0, 1, 2, 3, 4, 99]}
            assert mine in {m.id for m in got}
            assert consumer.receive(timeout=0.5) is None  # nothing of "shipped"
            consumer.close()
            # the exchange is still the direct one it was
            channel.exchange_declare(topic, exchange_type=ExchangeType("direct"), durable=True)
    finally:
        channel.exchange_delete(topic)


def test_existing_topic_exchange_with_other_flags(
    rabbit_url: str, channel: BlockingChannel, topic: str
) -> None:
    """A topic exchange another client declared with pika's defaults (not durable)."""
    channel.exchange_declare(topic, exchange_type=ExchangeType("topic"))
    try:
        with mqkit.connect(rabbit_url) as broker:
            consumer = broker.consumer(topic, group="g1", partitions=2)
            with broker.producer() as producer:
                producer.send(topic, 1, key="a")
            channel.basic_publish(topic, "customer-7", b"2")
            got = _receive(consumer, 2)
            assert sorted((m.key, m.value) for m in got) == [("a", 1), ("customer-7", 2)]
            consumer.close()
        channel.exchange_declare(topic, exchange_type=ExchangeType("topic"), passive=True)
    finally:
        channel.exchange_delete(topic)


def test_existing_headers_exchange(rabbit_url: str, channel: BlockingChannel, topic: str) -> None:
    channel.exchange_declare(topic, exchange_type=ExchangeType("headers"), durable=True)
    try:
        with mqkit.connect(rabbit_url) as broker:
            consumer = broker.consumer(topic, group="g1", partitions=1)
            channel.basic_publish(topic, "", b'"h"', pika.BasicProperties(headers={"kind": "x"}))
            [message] = _receive(consumer, 1)
            assert message.value == "h" and message.headers == {"kind": "x"}
            consumer.close()
    finally:
        channel.exchange_delete(topic)


def test_existing_classic_queue_is_consumed_as_it_is(
    rabbit_url: str, channel: BlockingChannel, topic: str
) -> None:
    """``queue=`` consumes someone else's classic queue: nothing is declared, members compete,
    the queue's order holds, a redelivery counts as attempt 2."""
    queue = f"legacy-{topic}"
    channel.queue_declare(queue, durable=True)  # a classic queue, as many services have
    try:
        for n in range(6):
            channel.basic_publish(
                "", queue, json.dumps(n).encode(), pika.BasicProperties(correlation_id=str(n))
            )
        with mqkit.connect(rabbit_url) as broker:
            one = broker.consumer("legacy_orders", group="g1", queue=queue)
            first = one.receive(timeout=10)
            assert first is not None and first.value == 0 and first.attempt == 1
            assert first.correlation_id == "0" and first.key is None
            assert first.topic == "legacy_orders" and first.metadata["exchange"] == ""
            first.nack()  # back into the queue; what this member prefetched comes first
            rest = _receive(one, 6)
            assert [m.value for m in rest] == [1, 2, 3, 4, 5, 0]
            again = rest[-1]
            assert again.id == first.id  # a stable id without message_id
            assert again.attempt == 2 and again.metadata["redelivered"] is True
            two = broker.consumer("legacy_orders", group="g1", queue=queue, prefetch=1)
            one.close()
            for n in range(6, 9):
                channel.basic_publish("", queue, json.dumps(n).encode())
            assert [m.value for m in _receive(two, 3)] == [6, 7, 8]  # members compete
            two.close()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as missing:
            # mqkit declared no exchange of the topic's name
            channel.exchange_declare("legacy_orders", passive=True)
        assert missing.value.reply_code == 404
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(rabbit_url.split("?")[0]))
        conn.channel().queue_delete(queue)
        conn.close()


def test_reply_to_a_plain_rpc_client(rabbit_url: str, channel: BlockingChannel, topic: str) -> None:
    """A plain RPC client sets ``reply_to`` to its own queue (``amq.gen-…``); mqkit's reply
    reaches that queue with the correlation id."""
    with mqkit.connect(rabbit_url) as broker:
        server = broker.consumer(topic, group="g1", partitions=1)
        inbox = channel.queue_declare("", exclusive=True).method.queue
        assert inbox and inbox.startswith("amq.gen-")
        channel.basic_publish(
            topic,
            "rpc",
            b'{"q": 1}',
            pika.BasicProperties(
                content_type="application/json", correlation_id="req-1", reply_to=inbox
            ),
        )
        [request] = _receive(server, 1)
        assert request.reply_to == inbox
        with broker.producer() as producer:
            producer.reply(request, {"a": 2})
        _method, props, body = _get(channel, inbox)
        assert json.loads(body) == {"a": 2}
        assert props.correlation_id == "req-1"
        assert props.content_type == "application/json"
        server.close()


def test_reply_through_direct_reply_to(
    rabbit_url: str, channel: BlockingChannel, topic: str
) -> None:
    """RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``): no queue at all on the client's
    side; mqkit's reply reaches it."""
    replies: list[tuple[Any, bytes]] = []
    channel.basic_consume(
        "amq.rabbitmq.reply-to",
        lambda _ch, _m, props, body: replies.append((props, body)),
        auto_ack=True,
    )
    with mqkit.connect(rabbit_url) as broker:
        server = broker.consumer(topic, group="g1", partitions=1)
        channel.basic_publish(
            topic,
            "rpc",
            b'"ping"',
            pika.BasicProperties(correlation_id="req-2", reply_to="amq.rabbitmq.reply-to"),
        )
        [request] = _receive(server, 1)
        assert (request.reply_to or "").startswith("amq.rabbitmq.reply-to.")
        with broker.producer() as producer:
            producer.reply(request, "pong")
        end = time.monotonic() + 10
        while not replies and time.monotonic() < end:
            channel.connection.process_data_events(time_limit=1)
        [(props, body)] = replies
        assert (json.loads(body), props.correlation_id) == ("pong", "req-2")
        server.close()


def test_mqkit_request_to_a_plain_server(
    rabbit_url: str, channel: BlockingChannel, topic: str
) -> None:
    """``Producer.request`` against a plain AMQP server: mqkit's ``reply_to`` is a topic, i.e.
    an exchange, so the server publishes its reply to exchange ``reply_to`` (any routing key)
    with the request's correlation id."""
    with mqkit.connect(rabbit_url) as broker:
        broker.consumer(topic, group="g1", partitions=1).close()
        requests = channel.queue_declare("", exclusive=True).method.queue
        assert requests
        channel.queue_bind(requests, topic, routing_key="#")

        def serve(ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
            ch.basic_publish(
                props.reply_to,
                "",
                json.dumps({"echo": json.loads(body)}).encode(),
                pika.BasicProperties(
                    content_type="application/json", correlation_id=props.correlation_id
                ),
            )
            ch.basic_ack(method.delivery_tag)

        with broker.producer() as client:
            result: list[Message] = []
            caller = threading.Thread(
                target=lambda: result.append(client.request(topic, {"q": 3}, timeout=15))
            )
            caller.start()
            _get_and_serve(channel, requests, serve)
            caller.join(20)
        [answer] = result
        assert answer.value == {"echo": {"q": 3}}
        assert answer.correlation_id


def _get_and_serve(channel: BlockingChannel, queue: str, serve: Any) -> None:
    end = time.monotonic() + 15
    while time.monotonic() < end:
        method, props, body = channel.basic_get(queue)
        if method is not None:
            serve(channel, method, props, body)
            return
        time.sleep(0.05)
    raise AssertionError("no request arrived")
