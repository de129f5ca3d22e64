"""mqkit next to a plain RocketMQ 5 client (Apache's ``rocketmq-python-client``, unmodified), on
the CI cluster of real Apache RocketMQ: what each side really sees of the other's messages
(bodies, typed headers, ids, content type, correlation id, reply-to, keys, tags, message
groups), request/reply across the two, and topics made beforehand by an administrator (NORMAL
and FIFO) that a plain producer writes with keys, tags and message groups of its own.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from mqkit_rocketmq import admin
from rocketmq import (  # type: ignore[import-untyped,unused-ignore]
    ClientConfiguration,
    Credentials,
    FilterExpression,
    Message,
    Producer,
    SimpleConsumer,
)

import mqkit
from mqkit import envelope
from mqkit.testing.util import ARRIVAL, assert_quiet, collect
from tests.rocketmq.conftest import endpoint


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class Plain:
    """A plain 5.x client: a producer and, per topic, a SimpleConsumer of its own group."""

    def __init__(self, url: str, namesrv: str) -> None:
        self._config = ClientConfiguration(endpoint(url), Credentials())
        self._namesrv = namesrv
        self._producer: Any = None
        self._consumers: list[Any] = []

    def send(
        self,
        topic: str,
        body: bytes,
        *,
        properties: dict[str, str] | None = None,
        group: str | None = None,
        tag: str | None = None,
        keys: tuple[str, ...] = (),
    ) -> str:
        if self._producer is None:
            self._producer = Producer(self._config)
            self._producer.startup()
        message = Message()
        message.topic = topic
        message.body = body
        for name, value in (properties or {}).items():
            message.add_property(name, value)
        if group is not None:
            message.message_group = group
        if tag is not None:
            message.tag = tag
        for key in keys:
            message.keys = key
        return str(self._producer.send(message).message_id)

    def consumer(self, topic: str) -> Any:
        """A SimpleConsumer of a new FIFO group, positioned at the topic's end."""
        group = _name("plain")
        admin.ensure_group(self._namesrv, group)
        consumer = SimpleConsumer(
            self._config, group, {topic: FilterExpression()}, await_duration=5
        )
        consumer.startup()
        assert consumer._init_settings_event.wait(30)
        admin.start_group_at_end(self._namesrv, group, topic)
        self._consumers.append(consumer)
        return consumer

    @staticmethod
    def receive(consumer: Any, count: int) -> list[Any]:
        out: list[Any] = []
        end = time.monotonic() + ARRIVAL
        while len(out) < count and time.monotonic() < end:
            for message in consumer.receive(16, 15):
                out.append(message)
                consumer.ack(message)
        assert len(out) == count, out
        return out

    def close(self) -> None:
        for consumer in self._consumers:
            consumer.shutdown()
        if self._producer is not None:
            self._producer.shutdown()


@pytest.fixture
def plain(rocketmq_url: str, namesrv: str) -> Any:
    client = Plain(rocketmq_url, namesrv)
    yield client
    client.close()


HEADERS: dict[str, mqkit.HeaderValue] = {
    "text": "héllo",
    "count": 7,
    "ratio": 1.5,
    "flag": True,
    "raw": b"\xff\x00",
    "empty": "",
}


# -- mqkit -> plain ------------------------------------------------------------------------------


def test_a_plain_consumer_reads_mqkits_json_message(rocketmq_url: str, plain: Plain) -> None:
    topic = _name("to_plain")
    with mqkit.connect(rocketmq_url) as broker, broker.producer() as producer:
        broker.consumer(topic, group=_name("warmup")).close()  # auto_create makes the topic
        raw = plain.consumer(topic)
        sent = producer.send(
            topic,
            {"order": 42},
            key="customer-7",
            headers=HEADERS,
            correlation_id="corr-1",
            reply_to="answers",
        )
        producer.flush()
        [message] = plain.receive(raw, 1)
    props = message.properties
    assert message.body == b'{"order":42}'
    assert props["content-type"] == "application/json"
    assert (props["correlation-id"], props["reply-to"]) == ("corr-1", "answers")
    assert "content-encoding" not in props
    # headers: text properties a plain client reads as they are
    assert (props["text"], props["count"], props["ratio"], props["flag"]) == (
        "héllo",
        "7",
        "1.5",
        "true",
    )
    assert base64.b64decode(props["raw"]) == b"\xff\x00"
    assert json.loads(props[envelope.HEADER_TYPES]) == {
        "count": "int",
        "ratio": "float",
        "flag": "bool",
        "raw": "bytes",
    }
    assert "empty" not in props  # RocketMQ drops empty properties: it travels in mqkit-headers
    assert json.loads(props["mqkit-headers"]) == {"empty": ""}
    assert message.message_group == "customer-7"  # the key is the FIFO message group
    assert props[envelope.ID] == sent and sent in message.keys
    assert message.message_type == 2  # FIFO


def test_a_plain_consumer_reads_mqkits_binary_and_text_messages(
    rocketmq_url: str, plain: Plain
) -> None:
    topic = _name("to_plain")
    with mqkit.connect(rocketmq_url) as broker:
        broker.consumer(topic, group=_name("warmup")).close()
        raw = plain.consumer(topic)
        with broker.producer(serializer="bytes") as producer:
            producer.send(topic, b"\x00\xff\x10 binary")
        with broker.producer(serializer="text") as producer:
            producer.send(topic, "plain text")
        got = plain.receive(raw, 2)
    by_type = {m.properties["content-type"]: m for m in got}
    assert by_type["application/octet-stream"].body == b"\x00\xff\x10 binary"
    assert by_type["text/plain; charset=utf-8"].body == b"plain text"
    assert all(m.message_group is None and m.message_type == 1 for m in got)  # NORMAL


# -- plain -> mqkit ------------------------------------------------------------------------------


def test_mqkit_reads_a_plain_producers_json_message(rocketmq_url: str, plain: Plain) -> None:
    topic, group = _name("from_plain"), _name("g")
    with mqkit.connect(rocketmq_url) as broker:
        consumer = broker.consumer(topic, group=group)
        message_id = plain.send(
            topic,
            b'{"order": 42}',
            properties={
                "content-type": "application/json",
                "correlation-id": "corr-9",
                "reply-to": "answers",
                "origin": "java-shop",
                "count": "7",
            },
            group="customer-7",
            tag="created",
            keys=("order-42",),
        )
        [got] = collect(consumer, 1)
    assert got.value == {"order": 42} and got.error is None
    assert got.content_type == "application/json"
    assert (got.correlation_id, got.reply_to) == ("corr-9", "answers")
    assert dict(got.headers) == {"origin": "java-shop", "count": "7"}  # untyped: text
    assert got.key == "customer-7"  # the message group
    assert got.id == message_id  # RocketMQ's id, not the keys
    meta = got.metadata
    assert meta["message_id"] == message_id
    assert (meta["tag"], meta["keys"], meta["message_group"]) == (
        "created",
        ["order-42"],
        "customer-7",
    )
    assert meta["message_type"] == "FIFO" and meta["born_host"]
    assert meta["born_timestamp"] and meta["delivery_attempt"] == 1


def test_mqkit_decodes_a_plain_binary_body_by_its_content_type(
    rocketmq_url: str, plain: Plain
) -> None:
    topic, group = _name("from_plain"), _name("g")
    with mqkit.connect(rocketmq_url) as broker:
        consumer = broker.consumer(topic, group=group)  # the JSON serializer
        plain.send(
            topic, b"\xff\x00 bytes", properties={"content-type": "application/octet-stream"}
        )
        plain.send(topic, b"no content type, not JSON")
        got = collect(consumer, 2)
    by_body = {m.body: m for m in got}
    labelled = by_body[b"\xff\x00 bytes"]
    assert labelled.error is None and labelled.value == b"\xff\x00 bytes"
    unlabelled = by_body[b"no content type, not JSON"]
    assert unlabelled.content_type is None
    assert unlabelled.error is not None  # decoded with the consumer's serializer, flagged


# -- request/reply across the two ----------------------------------------------------------------


def test_mqkit_request_answered_by_a_plain_client(
    plain_url: str, plain: Plain, namesrv: str
) -> None:
    """Without auto_create: the reply topic is made for the request and deleted after it."""
    topic = _name("rpc")
    admin.ensure_topic(namesrv, topic)
    raw = plain.consumer(topic)
    stop = threading.Event()
    seen: list[Any] = []

    def serve() -> None:
        while not stop.is_set():
            for request in raw.receive(1, 15):
                raw.ack(request)
                seen.append(request)
                props = request.properties
                plain.send(
                    props["reply-to"].replace(".", "_"),
                    b'{"answer": 42}',
                    properties={
                        "content-type": "application/json",
                        "correlation-id": props["correlation-id"],
                    },
                )

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        with mqkit.connect(plain_url) as broker, broker.producer() as producer:
            answer = producer.request(topic, {"question": "?"}, timeout=ARRIVAL)
            reply_topic = seen[0].properties["reply-to"]
    finally:
        stop.set()
        server.join(30)
    assert answer.value == {"answer": 42}
    assert answer.correlation_id == seen[0].properties["correlation-id"]
    assert reply_topic.startswith("mqkit.reply.")
    assert not admin.topic_exists(namesrv, reply_topic.replace(".", "_"))  # deleted after


def test_a_plain_clients_request_answered_by_mqkit(rocketmq_url: str, plain: Plain) -> None:
    topic, answers = _name("rpc"), _name("answers")
    with mqkit.connect(rocketmq_url) as broker:
        consumer = broker.consumer(topic, group=_name("server"))
        broker.consumer(answers, group=_name("warmup")).close()  # makes the reply topic
        raw = plain.consumer(answers)
        plain.send(
            topic,
            b'{"q": 1}',
            properties={"correlation-id": "req-1", "reply-to": answers},
        )
        [request] = collect(consumer, 1)
        with broker.producer() as producer:
            producer.reply(request, {"a": 1})
        [reply] = plain.receive(raw, 1)
    assert reply.body == b'{"a":1}'
    assert reply.properties["correlation-id"] == "req-1"
    assert reply.properties["content-type"] == "application/json"


# -- topics made beforehand, written by a plain producer -----------------------------------------


@pytest.mark.parametrize("kind", ["NORMAL", "FIFO"])
def test_an_existing_topic_reaches_every_group(
    plain_url: str, plain: Plain, namesrv: str, kind: str
) -> None:
    """A topic made by an administrator, groups as a deployment makes them (FIFO, for order),
    mqkit without auto_create; a plain producer with keys, tags and (FIFO) message groups of
    its own: every group gets every message, each message group in order."""
    topic = _name(f"legacy_{kind.lower()}")
    admin.ensure_topic(namesrv, topic, message_type=kind)
    groups = [_name("g"), _name("g")]
    for group in groups:
        admin.ensure_group(namesrv, group)
    per_group, count = 3, 5
    with mqkit.connect(plain_url) as broker:
        consumers = [broker.consumer(topic, group=g, serializer="bytes") for g in groups]
        sent = []
        for n in range(count):
            for g in range(per_group):
                body = f"{g}:{n}".encode()
                plain.send(
                    topic,
                    body,
                    properties={"n": str(n)},
                    group=f"customer-{g}" if kind == "FIFO" else None,
                    tag=f"tag{n % 2}",
                    keys=(f"order-{g}-{n}",),
                )
                sent.append(body)
        for consumer in consumers:
            got = collect(consumer, count * per_group)
            assert sorted(m.body for m in got) == sorted(sent)
            assert {m.metadata["tag"] for m in got} == {"tag0", "tag1"}
            if kind == "FIFO":
                order: dict[str | None, list[int]] = defaultdict(list)
                for m in got:
                    order[m.key].append(int(m.body.split(b":")[1]))
                assert order == {f"customer-{g}": list(range(count)) for g in range(per_group)}
            else:
                assert all(m.key is None for m in got)
            assert_quiet(consumer)


def test_mqkit_sends_to_an_existing_fifo_topic(plain_url: str, plain: Plain, namesrv: str) -> None:
    """A FIFO topic refuses NORMAL messages: an unkeyed message goes as a FIFO message of its
    own message group, and arrives without a key; keyed ones keep their key."""
    topic, group = _name("legacy_fifo"), _name("g")
    admin.ensure_topic(namesrv, topic, message_type="FIFO")
    admin.ensure_group(namesrv, group)
    with mqkit.connect(plain_url) as broker:
        consumer = broker.consumer(topic, group=group)
        raw = plain.consumer(topic)
        with broker.producer() as producer:
            unkeyed = producer.send(topic, {"n": 1})
            producer.send(topic, {"n": 2}, key="customer-7")
        got = {m.value["n"]: m for m in collect(consumer, 2)}
        plain_got = plain.receive(raw, 2)
    assert got[1].key is None and got[1].id == unkeyed
    assert got[2].key == "customer-7"
    assert all(m.message_type == 2 for m in plain_got)  # FIFO, as the topic requires
    assert {m.message_group for m in plain_got} == {unkeyed, "customer-7"}
