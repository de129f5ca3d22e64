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


def record(
    offset: int = 7, headers: Sequence[tuple[str, bytes | None]] = (), **fields: Any
) -> Any:
    from kafka.consumer.fetcher import ConsumerRecord  # type: ignore[import-untyped]

    values: dict[str, Any] = {
        "topic": "orders", "partition": 2, "leader_epoch": 0, "offset": offset,
        "timestamp": 1_700_000_000_123, "timestamp_type": 0, "key": None, "value": b"{}",
        "headers": list(headers), "checksum": None, "serialized_key_size": -1,
        "serialized_value_size": 2, "serialized_header_size": -1,
    }
    values.update(fields)
    return ConsumerRecord(**values)


def test_key_and_timestamp_are_the_records_own_and_the_id_a_header() -> None:
    message = OutgoingMessage(
        topic="orders", body=b"x", key="customer-7", headers={"trace": "é"}, timestamp=1.5
    )
    key, headers, stamp = wire.encode(message)
    assert key == b"customer-7"
    assert stamp == 1500
    assert headers == [("trace", "é".encode()), (envelope.ID, message.id.encode())]


def test_mqkit_records_decode_to_what_was_sent() -> None:
    message = OutgoingMessage(topic="orders", body=b"{}", key="k", headers={"a": "1"})
    key, headers, stamp = wire.encode(message)
    delivery = wire.decode(
        "orders", 2, record(key=key, headers=headers, timestamp=stamp), 1, "handle"
    )
    assert (delivery.id, delivery.key, delivery.headers) == (message.id, "k", {"a": "1"})
    assert delivery.timestamp == pytest.approx(message.timestamp, abs=0.001)
    assert (delivery.attempt, delivery.handle) == (1, "handle")


def test_a_foreign_record_gets_a_stable_id_from_its_place_in_the_log() -> None:
    first = wire.decode("orders", 2, record(offset=7), 1, None)
    again = wire.decode("orders", 2, record(offset=7), 2, None)
    other = wire.decode("orders", 2, record(offset=8), 1, None)
    assert first.id == again.id == envelope.transport_id("orders", 2, 7)
    assert other.id != first.id
    assert first.timestamp == 1_700_000_000.123
    assert (first.key, first.headers, first.body) == (None, {}, b"{}")


def test_a_foreign_record_keeps_its_headers_but_not_mqkits_transport_fields() -> None:
    headers: list[tuple[str, bytes | None]] = [
        ("trace", b"abc"),
        ("empty", None),
        (envelope.KEY, b"not ours"),
        (envelope.ORIGIN_ID, b"o-1"),
    ]
    delivery = wire.decode("orders", 2, record(headers=headers, value=None), 1, None)
    assert delivery.headers == {"trace": "abc", "empty": "", envelope.ORIGIN_ID: "o-1"}
    assert delivery.id == envelope.transport_id("orders", 2, 7)
    assert delivery.body == b""


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
                topic, b'{"n": 1}', key=b"k", headers=[("source", b"legacy")],
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
