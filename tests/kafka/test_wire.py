"""The envelope on Kafka records: what mqkit writes, and records of producers that are not mqkit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from mqkit_kafka import wire

import mqkit
from mqkit import envelope
from mqkit.message import OutgoingMessage
from mqkit.testing.util import assert_quiet, collect


def record(offset: int = 7, headers: Sequence[tuple[str, bytes | None]] = (), **fields: Any) -> Any:
    from kafka.consumer.fetcher import ConsumerRecord  # type: ignore[import-untyped]

    values: dict[str, Any] = {
        "topic": "orders",
        "partition": 2,
        "leader_epoch": 0,
        "offset": offset,
        "timestamp": 1_700_000_000_123,
        "timestamp_type": 0,
        "key": None,
        "value": b"{}",
        "headers": list(headers),
        "checksum": None,
        "serialized_key_size": -1,
        "serialized_value_size": 2,
        "serialized_header_size": -1,
    }
    values.update(fields)
    return ConsumerRecord(**values)


def test_key_and_timestamp_are_the_records_own_and_the_rest_headers() -> None:
    message = OutgoingMessage(
        topic="orders",
        body=b"x",
        key="customer-7",
        headers={"trace": "é", "n": 3, "raw": b"\xff\x00"},
        timestamp=1.5,
        content_type="application/json",
        correlation_id="c-1",
        reply_to="replies",
    )
    key, headers, stamp = wire.encode(message)
    assert key == b"customer-7"
    assert stamp == 1500
    assert headers == [
        ("trace", "é".encode()),
        ("n", b"3"),
        ("raw", b"\xff\x00"),
        (envelope.CONTENT_TYPE, b"application/json"),
        (envelope.CORRELATION_ID, b"c-1"),
        (envelope.REPLY_TO, b"replies"),
        (envelope.HEADER_TYPES, b'{"n":"int","raw":"bytes"}'),
        (envelope.ID, message.id.encode()),
    ]


def test_only_set_fields_and_no_types_for_text_headers() -> None:
    message = OutgoingMessage(topic="orders", body=b"x", headers={"a": "1"})
    _, headers, _ = wire.encode(message)
    assert headers == [("a", b"1"), (envelope.ID, message.id.encode())]


def test_mqkit_records_decode_to_what_was_sent() -> None:
    message = OutgoingMessage(
        topic="orders",
        body=b"{}",
        key="k",
        headers={"a": "1", "b": True, "f": 0.25, "raw": b"\xff"},
        content_type="text/plain; charset=utf-8",
        content_encoding="gzip",
        correlation_id="c",
        reply_to="r",
    )
    key, headers, stamp = wire.encode(message)
    delivery = wire.decode(
        "orders", 2, record(key=key, headers=headers, timestamp=stamp), 1, "handle"
    )
    assert (delivery.id, delivery.key) == (message.id, "k")
    assert delivery.headers == {"a": "1", "b": True, "f": 0.25, "raw": b"\xff"}
    assert (delivery.content_type, delivery.content_encoding) == (
        "text/plain; charset=utf-8",
        "gzip",
    )
    assert (delivery.correlation_id, delivery.reply_to) == ("c", "r")
    assert delivery.timestamp == pytest.approx(message.timestamp, abs=0.001)
    assert (delivery.attempt, delivery.handle) == (1, "handle")
    assert delivery.metadata["headers"] == headers  # the raw list, mqkit's fields included


def test_a_foreign_record_gets_a_stable_id_from_its_place_in_the_log() -> None:
    first = wire.decode("orders", 2, record(offset=7), 1, None)
    again = wire.decode("orders", 2, record(offset=7), 2, None)
    other = wire.decode("orders", 2, record(offset=8), 1, None)
    assert first.id == again.id == envelope.transport_id("orders", 2, 7)
    assert other.id != first.id
    assert first.timestamp == 1_700_000_000.123
    assert (first.key, first.headers, first.body) == (None, {}, b"{}")
    assert first.content_type is None and first.correlation_id is None
    assert first.metadata == {
        "partition": 2,
        "offset": 7,
        "timestamp_ms": 1_700_000_000_123,
        "timestamp_type": 0,
        "leader_epoch": 0,
        "headers": [],
        "serialized_key_size": -1,
        "serialized_value_size": 2,
        "serialized_header_size": -1,
    }


def test_a_foreign_record_keeps_every_header_it_has_and_their_bytes() -> None:
    """Names under mqkit's prefix are user headers unless they are well-formed mqkit fields;
    a value that is not UTF-8 stays bytes; null is the empty string; the last of a repeated
    name counts; the standard names are the standard fields whatever their case."""
    headers: list[tuple[str, bytes | None]] = [
        ("trace", b"abc"),
        ("binary", b"\xff\x00"),
        ("empty", None),
        ("twice", b"1"),
        ("twice", b"2"),
        (envelope.KEY, b"not ours"),
        (envelope.ORIGIN_ID, b"o-1"),
        (envelope.ID, b"order-42"),  # not an mqkit id: a header like any other
        (envelope.HEADER_TYPES, b"not json"),
        ("Content-Type", b"application/json"),
        ("correlation-id", b"c-9"),
    ]
    delivery = wire.decode("orders", 2, record(headers=headers, value=None), 1, None)
    assert delivery.headers == {
        "trace": "abc",
        "binary": b"\xff\x00",
        "empty": "",
        "twice": "2",
        envelope.KEY: "not ours",
        envelope.ORIGIN_ID: "o-1",
        envelope.ID: "order-42",
        envelope.HEADER_TYPES: "not json",
    }
    assert (delivery.content_type, delivery.correlation_id) == ("application/json", "c-9")
    assert delivery.id == envelope.transport_id("orders", 2, 7)
    assert delivery.body == b""


def test_a_well_formed_id_and_type_map_from_another_producer_are_used() -> None:
    given = "0123456789abcdef0123456789abcdef"
    headers = [
        (envelope.ID, given.encode()),
        ("n", b"12"),
        (envelope.HEADER_TYPES, b'{"n": "int"}'),
    ]
    delivery = wire.decode("orders", 2, record(headers=headers), 1, None)
    assert (delivery.id, delivery.headers) == (given, {"n": 12})
    for bad in (given.upper(), given[:-1], given + "0"):
        odd = wire.decode("orders", 2, record(headers=[(envelope.ID, bad.encode())]), 1, None)
        assert (odd.id, odd.headers) == (envelope.transport_id("orders", 2, 7), {envelope.ID: bad})


def test_reserved_names_are_refused_and_every_other_header_arrives(
    kafka_url: str, topic: str, group: str
) -> None:
    """A user header ``mqkit-id`` used to be dropped silently; the core now refuses it, and
    the adapter drops nothing the user may send."""
    sent = {
        "x-mqkit-key": "a",
        "mqkit": "b",
        envelope.ORIGIN_ID: "c",
        envelope.RETRY_ATTEMPTS: "2",
        "Mqkit-Id-Like": "d",
        "empty": "",
    }
    with mqkit.connect(kafka_url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            with pytest.raises(ValueError, match="reserved"):
                producer.send(topic, 0, headers={envelope.ID: "mine"})
            message_id = producer.send(topic, 1, headers=sent)
        [message] = collect(consumer, 1)
        assert (message.id, message.headers) == (message_id, sent)
        assert_quiet(consumer)


def test_a_record_from_another_producer_decodes(
    kafka_url: str, bootstrap: str, topic: str, group: str
) -> None:
    from kafka import KafkaProducer  # type: ignore[import-untyped]

    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        raw = KafkaProducer(bootstrap_servers=bootstrap)
        try:
            raw.send(
                topic,
                b'{"n": 1}',
                key=b"k",
                headers=[("source", b"legacy")],
                timestamp_ms=1_700_000_000_000,
            ).get(timeout=30)
        finally:
            raw.close()
        [message] = collect(consumer, 1)
        assert message.value == {"n": 1}
        assert (message.key, message.headers) == ("k", {"source": "legacy"})
        assert message.id == envelope.transport_id(topic, 0, 0)
        assert message.timestamp == 1_700_000_000.0
        assert_quiet(consumer)
