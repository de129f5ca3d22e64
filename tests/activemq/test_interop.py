"""mqkit and a plain STOMP client on the shared ActiveMQ: each reads what the other wrote.

The standard fields must travel on the headers ActiveMQ maps onto JMS (``content-type``,
``correlation-id``, ``reply-to``, ``timestamp``, ``message-id``), typed headers as readable text,
user headers with hyphens must survive the broker's STOMP → JMS property → STOMP round trip, and
a message from a client that is not mqkit must decode: the broker's ``message-id`` as its id, the
JMS timestamp as its time, its content type deciding how the body decodes. Existing queues and
topics are read through the ``destination`` consumer option.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stomp  # type: ignore[import-untyped]
from mqkit_activemq.wire import group_destination, topic_destination

import mqkit
from mqkit import envelope
from mqkit.adapter import OutgoingMessage
from mqkit.config import parse_url
from mqkit.testing.util import collect

WAIT = 10.0


class _Plain:
    """A stomp.py connection that knows nothing of mqkit: MESSAGE frames into a queue, receipts
    waited for."""

    def __init__(self, url: str) -> None:
        parsed = parse_url(url)
        self.frames: queue.Queue[Any] = queue.Queue()
        self._receipts: set[str] = set()
        self._cv = threading.Condition()
        self._ids = iter(range(1, 1 << 30))
        self.conn = stomp.Connection12([(parsed.host, parsed.port or 61613)], auto_decode=False)
        self.conn.set_listener("plain", self)
        self.conn.connect(parsed.username, parsed.password, wait=True)

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)

    def on_receipt(self, frame: Any) -> None:
        with self._cv:
            self._receipts.add(frame.headers.get("receipt-id", ""))
            self._cv.notify_all()

    def _await(self, receipt: str) -> None:
        with self._cv:
            assert self._cv.wait_for(lambda: receipt in self._receipts, WAIT), receipt

    def subscribe(self, destination: str) -> None:
        receipt = f"r{next(self._ids)}"
        self.conn.subscribe(
            destination, id=destination, ack="client-individual", headers={"receipt": receipt}
        )
        self._await(receipt)

    def send(self, destination: str, body: bytes, **headers: str) -> None:
        """A persistent SEND, confirmed by the broker."""
        receipt = f"r{next(self._ids)}"
        self.conn.send(destination, body, headers={**headers, "receipt": receipt})
        self._await(receipt)

    def take(self) -> Any:
        frame = self.frames.get(timeout=WAIT)
        self.conn.ack(frame.headers["ack"], frame.headers["subscription"])
        return frame

    def close(self) -> None:
        self.conn.disconnect()


@pytest.fixture
def plain(shared_url: str) -> Iterator[_Plain]:
    client = _Plain(shared_url)
    try:
        yield client
    finally:
        client.close()


def _names() -> tuple[str, str]:
    return f"interop-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"


# -- mqkit → plain ---------------------------------------------------------------------------


def test_a_plain_stomp_client_reads_what_mqkit_sends(shared_url: str, plain: _Plain) -> None:
    topic, group = _names()
    plain.subscribe(group_destination(topic, group))
    with mqkit.connect(shared_url) as broker:
        before = time.time()
        with broker.producer() as producer:
            sent = producer.send(
                topic,
                {"order": 42, "note": "héllo € 🙂"},
                key="k-1",
                headers={
                    "trace-id": "t-1",
                    "priority": "high",
                    "count": 7,
                    "ratio": 1.5,
                    "flag": True,
                    "raw": b"\xff\x00",
                },
                correlation_id="corr-1",
                reply_to="answers",
            )
    frame = plain.take()
    headers = frame.headers
    assert json.loads(frame.body) == {"order": 42, "note": "héllo € 🙂"}
    assert headers["content-type"] == "application/json"
    assert "content-length" not in headers  # a JMS TextMessage: getText() in Java services
    assert headers["correlation-id"] == "corr-1"
    assert headers["reply-to"] == "/topic/VirtualTopic.answers"  # JMSReplyTo, a destination
    assert headers["message-id"].startswith("ID:")  # the broker's JMSMessageID
    assert headers[envelope.ID] == sent and headers[envelope.KEY] == "k-1"
    assert abs(int(headers["timestamp"]) / 1000 - before) < 60  # the native JMS timestamp
    # Typed values as text (bytes in base64), their types for mqkit consumers beside them.
    assert (headers["count"], headers["ratio"], headers["flag"]) == ("7", "1.5", "true")
    assert base64.b64decode(headers["raw"]) == b"\xff\x00"
    assert json.loads(headers[envelope.HEADER_TYPES]) == {
        "count": "int",
        "ratio": "float",
        "flag": "bool",
        "raw": "bytes",
    }
    assert headers["trace-id"] == "t-1"  # a plain name travels as it is
    assert headers["priority"] == "4"  # the user's "priority" did not become the JMS priority


def test_a_binary_body_reaches_a_plain_client_byte_for_byte(shared_url: str, plain: _Plain) -> None:
    topic, group = _names()
    plain.subscribe(group_destination(topic, group))
    body = bytes(range(256)) + b"\x00\x00"
    with mqkit.connect(shared_url, serializer="bytes") as broker, broker.producer() as producer:
        producer.send(topic, body)
        producer.send(
            topic, b'{"zipped": 1}', content_type="application/json", content_encoding="gzip"
        )
    frame = plain.take()
    assert frame.body == body
    assert frame.headers["content-type"] == "application/octet-stream"
    assert frame.headers["content-length"] == str(len(body))  # a JMS BytesMessage
    encoded = plain.take()
    assert encoded.headers["content-encoding"] == "gzip"
    assert "content-length" in encoded.headers  # encoded bodies are bytes, whatever their type


# -- plain → mqkit ---------------------------------------------------------------------------


def test_mqkit_reads_what_a_plain_stomp_client_sends(shared_url: str, plain: _Plain) -> None:
    topic, group = _names()
    with mqkit.connect(shared_url, serializer="bytes") as broker:
        consumer = broker.consumer(topic, group=group)
        before = time.time()
        plain.send(
            topic_destination(topic), b"from elsewhere", persistent="true", **{"order-no": "17"}
        )
        message = consumer.receive(timeout=WAIT)
        assert message is not None
        assert message.body == b"from elsewhere"
        assert message.id.startswith("ID:")  # the broker's message-id
        assert message.id == message.metadata["message-id"]
        assert (message.key, message.attempt) == (None, 1)
        assert (message.content_type, message.correlation_id, message.reply_to) == (
            None,
            None,
            None,
        )
        assert dict(message.headers) == {"order-no": "17"}
        assert abs(message.timestamp - before) < 60
        message.nack()  # the copy keeps the id: idempotency works for foreign producers too
        again = consumer.receive(timeout=WAIT)
        assert again is not None
        assert (again.id, again.attempt, again.body) == (message.id, 2, b"from elsewhere")
        assert again.timestamp == message.timestamp
        assert dict(again.headers) == {"order-no": "17"}
        again.ack()


def test_a_plain_clients_fields_and_content_type_reach_mqkit(
    shared_url: str, plain: _Plain
) -> None:
    topic, group = _names()
    with mqkit.connect(shared_url) as broker:  # a JSON consumer
        consumer = broker.consumer(topic, group=group)
        destination = topic_destination(topic)
        plain.send(
            destination,
            b'{"order": 7}',
            **{
                "content-type": "application/json",
                "correlation-id": "c-7",
                "reply-to": "/queue/legacy.replies",
                "count": "3",
                "JMSXGroupID": "customer-7",
                "persistent": "true",
            },
        )
        plain.send(
            destination,
            b"\x00\xffraw",
            **{
                "content-type": "application/octet-stream",
                "reply-to": "/topic/VirtualTopic.back",
            },
        )
        plain.send(
            destination,
            "plain text, not JSON €".encode(),
            **{"content-type": "text/plain; charset=utf-8"},
        )
        first, second, third = collect(consumer, 3)
        assert first.value == {"order": 7} and first.error is None
        assert first.content_type == "application/json"
        assert first.correlation_id == "c-7"
        assert first.reply_to == "/queue/legacy.replies"  # not mqkit's: the destination itself
        assert dict(first.headers) == {"count": "3"}  # no mqkit-types: text stays text
        meta = first.metadata
        assert meta["destination"] == group_destination(topic, group)
        assert meta["original-destination"] == destination
        assert meta["message-id"] == first.id and meta["persistent"] == "true"
        assert {"subscription", "priority", "expires", "timestamp"} <= set(meta)
        assert second.value == b"\x00\xffraw"  # decoded by its content type, not as JSON
        assert second.reply_to == "back"  # mqkit's topic of that virtual topic
        assert third.value == "plain text, not JSON €"


def test_mqkit_replies_to_a_plain_requester(shared_url: str, plain: _Plain) -> None:
    """A request from a plain client with ``reply-to: /queue/…``; mqkit's reply lands there with
    the correlation id. (The adapter sends to a raw destination; ``Producer.reply`` reaches it
    once the core passes a received reply-to through unchecked.)"""
    topic, group = _names()
    replies = f"/queue/legacy.replies.{uuid.uuid4().hex[:8]}"
    plain.subscribe(replies)
    with mqkit.connect(shared_url) as broker:
        consumer = broker.consumer(topic, group=group)
        plain.send(
            topic_destination(topic),
            b'{"q": 1}',
            **{
                "content-type": "application/json",
                "correlation-id": "req-1",
                "reply-to": replies,
            },
        )
        [request] = collect(consumer, 1)
        assert request.reply_to == replies
        backend: Any = broker._backend  # the adapter's driver: what reply() hands it
        driver = backend.producer({})
        try:
            driver.send(
                OutgoingMessage(
                    topic=request.reply_to,
                    body=b'{"a": 2}',
                    content_type="application/json",
                    correlation_id=request.correlation_id,
                )
            )
            driver.flush(WAIT)
        finally:
            driver.close()
    frame = plain.take()
    assert frame.headers["destination"] == replies
    assert frame.headers["correlation-id"] == "req-1"
    assert json.loads(frame.body) == {"a": 2}


def test_a_plain_replier_answers_mqkit_requests(shared_url: str, plain: _Plain) -> None:
    """``Producer.request``: a plain service reads reply-to and correlation-id and answers."""
    topic, group = _names()
    plain.subscribe(group_destination(topic, group))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                frame = plain.frames.get(timeout=0.2)
            except queue.Empty:
                continue
            plain.conn.ack(frame.headers["ack"], frame.headers["subscription"])
            question = json.loads(frame.body)
            plain.conn.send(
                frame.headers["reply-to"],
                json.dumps({"answer": question["q"] * 2}).encode(),
                headers={
                    "content-type": "application/json",
                    "correlation-id": frame.headers["correlation-id"],
                },
            )

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        with mqkit.connect(shared_url) as broker, broker.producer() as producer:
            answers = [producer.request(topic, {"q": n}, timeout=WAIT) for n in (1, 2)]
    finally:
        stop.set()
        server.join(WAIT)
    assert [a.value for a in answers] == [{"answer": 2}, {"answer": 4}]


# -- existing destinations -------------------------------------------------------------------


def test_a_plain_send_to_the_virtual_topic_reaches_every_group(
    shared_url: str, plain: _Plain
) -> None:
    topic, group = _names()
    with mqkit.connect(shared_url, serializer="bytes") as broker:
        one = broker.consumer(topic, group=group)
        two = broker.consumer(topic, group=group + "-2")
        plain.send(f"/topic/VirtualTopic.{topic}", b"to all groups")
        assert [m.body for m in collect(one, 1)] == [b"to all groups"]
        assert [m.body for m in collect(two, 1)] == [b"to all groups"]


def test_an_existing_queue_is_read_through_the_destination_option(
    shared_url: str, plain: _Plain
) -> None:
    legacy = f"/queue/legacy.orders.{uuid.uuid4().hex[:8]}"
    for n in range(4):  # sent before mqkit ever looked at the queue: kept by the queue
        plain.send(legacy, json.dumps({"n": n}).encode(), **{"content-type": "application/json"})
    with mqkit.connect(shared_url) as broker:
        consumer = broker.consumer("legacy", group="billing", destination=legacy, prefetch=1)
        first = consumer.receive(timeout=WAIT)
        assert first is not None and first.value == {"n": 0}
        assert first.topic == "legacy" and first.metadata["destination"] == legacy
        first.nack()  # back into the same queue, attempt + 1
        got = collect(consumer, 4)
        assert sorted(m.value["n"] for m in got) == [0, 1, 2, 3]
        assert [m.attempt for m in got if m.value == {"n": 0}] == [2]
        assert consumer.receive(timeout=1.0) is None
    # The queue is the plain client's as before: what mqkit sent back is not left in it.
    plain.subscribe(legacy)
    with pytest.raises(queue.Empty):
        plain.frames.get(timeout=1.0)


def test_an_existing_topic_is_read_through_a_durable_subscription(
    shared_url: str, plain: _Plain
) -> None:
    legacy = f"/topic/legacy.events.{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    with mqkit.connect(shared_url) as broker:
        consumer = broker.consumer("events", group=group, destination=legacy)
        plain.send(legacy, b'{"n": 1}', **{"content-type": "application/json"})
        [first] = collect(consumer, 1, ack=False)
        assert first.value == {"n": 1}
        first.nack()  # a copy for this group only, on its requeue queue
        [again] = collect(consumer, 1)
        assert (again.value, again.attempt, again.id) == ({"n": 1}, 2, first.id)
        # One member of a group at a time: a durable subscription has one client id.
        with pytest.raises(mqkit.BrokerUnavailable, match="already connected"):
            broker.consumer("events", group=group, destination=legacy)
        consumer.close()
        # Sent while nobody of the group is connected: kept by the durable subscription.
        plain.send(legacy, b'{"n": 2}', **{"content-type": "application/json"})
        later = broker.consumer("events", group=group, destination=legacy)
        assert [m.value for m in collect(later, 1)] == [{"n": 2}]
        assert later.receive(timeout=1.0) is None


def test_a_non_durable_consumer_leaves_nothing_behind(shared_url: str, plain: _Plain) -> None:
    """``durable=false`` (the reply inbox's option): only what arrives while it is connected."""
    topic, group = _names()
    with mqkit.connect(shared_url, serializer="bytes") as broker:
        consumer = broker.consumer(topic, group=group, durable=False)
        plain.send(topic_destination(topic), b"live")
        [live] = collect(consumer, 1, ack=False)
        live.nack()  # the copy goes to the connection's temporary queue
        [again] = collect(consumer, 1)
        assert (again.body, again.attempt) == (b"live", 2)
        consumer.close()
        plain.send(topic_destination(topic), b"missed")
        later = broker.consumer(topic, group=group, durable=False)
        assert later.receive(timeout=1.0) is None


def test_the_destination_option_is_checked(shared_url: str) -> None:
    with mqkit.connect(shared_url) as broker:
        with pytest.raises(mqkit.ConfigError, match="/queue/NAME or /topic/NAME"):
            broker.consumer("legacy", group="g", destination="legacy")
        with pytest.raises(mqkit.ConfigError, match="give one topic"):
            broker.consumer(["a", "b"], group="g", destination="/queue/legacy")
