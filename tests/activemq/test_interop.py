"""mqkit and a plain STOMP client on the shared ActiveMQ: each reads what the other wrote.

The envelope's names (``mqkit-id``, ``mqkit-key``…) and user headers with hyphens must survive
the broker's STOMP → JMS property → STOMP round trip, and a message from a client that is not
mqkit must decode: the broker's ``message-id`` as its id, the JMS timestamp as its time.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stomp  # type: ignore[import-untyped]
from mqkit_activemq.wire import group_destination, topic_destination

import mqkit
from mqkit import envelope
from mqkit.config import parse_url


class _Frames:
    """A plain stomp.py listener: MESSAGE frames into a queue."""

    def __init__(self) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)


@pytest.fixture
def plain(shared_url: str) -> Iterator[tuple[Any, _Frames]]:
    """A stomp.py connection that knows nothing of mqkit."""
    url = parse_url(shared_url)
    conn = stomp.Connection12([(url.host, url.port or 61613)], auto_decode=False)
    listener = _Frames()
    conn.set_listener("plain", listener)
    conn.connect(url.username, url.password, wait=True)
    try:
        yield conn, listener
    finally:
        conn.disconnect()


def _names() -> tuple[str, str]:
    return f"interop-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"


def test_a_plain_stomp_client_reads_what_mqkit_sends(
    shared_url: str, plain: tuple[Any, _Frames]
) -> None:
    conn, listener = plain
    topic, group = _names()
    conn.subscribe(group_destination(topic, group), id="p0", ack="client-individual",
                   headers={"receipt": "sub"})
    time.sleep(0.5)  # the receipt comes on stomp.py's thread; give the queue time to exist
    with mqkit.connect(shared_url, serializer="bytes") as broker:
        before = time.time()
        with broker.producer() as producer:
            sent = producer.send(topic, b"hi", key="k-1",
                                 headers={"trace-id": "t-1", "priority": "high"})
    frame = listener.frames.get(timeout=10)
    conn.ack(frame.headers["ack"])
    headers = frame.headers
    assert frame.body == b"hi"
    assert headers[envelope.ID] == sent and headers[envelope.KEY] == "k-1"
    assert headers["trace-id"] == "t-1"  # a plain name travels as it is
    assert abs(int(headers["timestamp"]) / 1000 - before) < 60  # the native JMS timestamp
    assert headers["priority"] == "4"  # the user's "priority" did not become the JMS priority


def test_mqkit_reads_what_a_plain_stomp_client_sends(
    shared_url: str, plain: tuple[Any, _Frames]
) -> None:
    conn, _ = plain
    topic, group = _names()
    with mqkit.connect(shared_url, serializer="bytes") as broker:
        consumer = broker.consumer(topic, group=group)
        before = time.time()
        conn.send(topic_destination(topic), b"from elsewhere",
                  headers={"persistent": "true", "order-no": "17", "receipt": "s"})
        message = consumer.receive(timeout=10)
        assert message is not None
        assert message.body == b"from elsewhere"
        assert message.id.startswith("ID:")  # the broker's message-id
        assert (message.key, message.attempt) == (None, 1)
        assert dict(message.headers) == {"order-no": "17"}
        assert abs(message.timestamp - before) < 60
        message.nack()  # the copy keeps the id: idempotency works for foreign producers too
        again = consumer.receive(timeout=10)
        assert again is not None
        assert (again.id, again.attempt, again.body) == (message.id, 2, b"from elsewhere")
        assert again.timestamp == message.timestamp
        assert dict(again.headers) == {"order-no": "17"}
        again.ack()
