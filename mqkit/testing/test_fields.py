"""The standard fields (content type and encoding, correlation id, reply-to), typed headers and
request/reply: the same on every backend (docs/interop.md has what maps to what)."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Mapping

import pytest

import mqkit
from mqkit import DeliveryTimeout
from mqkit.message import new_message_id
from mqkit.testing.util import ARRIVAL, collect

TYPED_HEADERS: dict[str, mqkit.HeaderValue] = {
    "text": "héllo, wörld",
    "count": 7,
    "negative": -12345678901,
    "ratio": 1.5,
    "flag": True,
    "off": False,
    "raw": b"\xff\x00\x80binary",
    "empty": "",
}


def test_standard_fields_round_trip(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            sent = producer.send(
                topic, {"n": 1}, key="k-1", correlation_id="corr-1", reply_to="replies.here"
            )
            producer.send(topic, {"n": 2}, key="k-1")
        first, second = collect(consumer, 2)
        assert first.value == {"n": 1} and first.id == sent
        assert first.content_type == "application/json"
        assert first.correlation_id == "corr-1"
        assert first.reply_to == "replies.here"
        assert first.content_encoding is None
        assert dict(first.headers) == {}
        assert second.correlation_id is None and second.reply_to is None
        assert isinstance(first.metadata, Mapping)


def test_a_given_message_id_is_kept(url: str, topic: str, group: str) -> None:
    """``send(message_id=...)``: a message sent again (an outbox relay, a spool after a crash)
    arrives under the same id both times, so the idempotency helper drops the copy."""
    mid = new_message_id()
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            assert producer.send(topic, 1, key="k", message_id=mid) == mid
            assert producer.send(topic, 1, key="k", message_id=mid) == mid
        first, second = collect(consumer, 2)
        assert (first.id, second.id) == (mid, mid)


def test_headers_keep_their_types(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, "x", headers=TYPED_HEADERS)
        [message] = collect(consumer, 1)
        assert dict(message.headers) == TYPED_HEADERS
        for name, value in TYPED_HEADERS.items():
            assert type(message.headers[name]) is type(value), name


def test_bodies_decode_by_their_content_type(url: str, topic: str, group: str) -> None:
    """A JSON consumer gets text as ``str`` and binary as ``bytes``; gzip is undone."""
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer(serializer="text") as text:
            text.send(topic, "plain text, not JSON", key="k")
        with broker.producer(serializer="bytes") as raw:
            raw.send(topic, b"\x00\xff binary", key="k")
            raw.send(
                topic,
                gzip.compress(b'{"zipped":true}'),
                key="k",
                content_type="application/json",
                content_encoding="gzip",
            )
        got = collect(consumer, 3)
        assert [m.error for m in got] == [None, None, None]
        assert [m.value for m in got] == [
            "plain text, not JSON",
            b"\x00\xff binary",
            {"zipped": True},
        ]
        assert got[0].content_type == "text/plain; charset=utf-8"
        assert got[1].content_type == "application/octet-stream"
        assert got[2].content_encoding == "gzip"


def test_standard_field_names_are_refused_as_headers(url: str, topic: str) -> None:
    with mqkit.connect(url) as broker, broker.producer() as producer:
        for name in ("content-type", "Correlation-Id", "reply-to"):
            with pytest.raises(ValueError, match="standard field"):
                producer.send(topic, 1, headers={name: "x"})


def test_request_reply(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        stop = threading.Event()

        def serve() -> None:
            with broker.producer() as replies:
                while not stop.is_set():
                    request = consumer.receive(timeout=0.2)
                    if request is None:
                        continue
                    replies.reply(request, {"echo": request.value, "by": "server"})
                    replies.flush()
                    request.ack()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            with broker.producer() as client:
                answers = [client.request(topic, {"q": n}, timeout=ARRIVAL) for n in range(3)]
        finally:
            stop.set()
            server.join(ARRIVAL)
        assert [a.value for a in answers] == [{"echo": {"q": n}, "by": "server"} for n in range(3)]
        assert all(a.correlation_id for a in answers)
        assert len({a.correlation_id for a in answers}) == 3


def test_request_without_a_replier_times_out(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        broker.consumer(topic, group=group)  # someone receives, nobody replies
        with broker.producer() as client, pytest.raises(DeliveryTimeout, match="no reply"):
            client.request(topic, 1, timeout=1.0)
