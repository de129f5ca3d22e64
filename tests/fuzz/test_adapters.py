"""Hostile input to each adapter's envelope decoding (``wire.decode``), without a broker.

Whatever another producer put in a record's headers, a STOMP frame, AMQP properties or RocketMQ
properties, decoding gives a delivery: attempt at least 1, a finite time, a ``str`` id, headers
of mqkit's types. And what mqkit sends comes back exactly, binary header values included.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mqkit import envelope
from mqkit.envelope import HeaderValue
from mqkit.message import Delivery, OutgoingMessage

from .strategies import FUZZ, bodies, header_names, text_values

_INT64 = st.integers(-(2**63), 2**63 - 1)


def _valid_name(name: str) -> bool:
    low = name.lower()
    return bool(name) and low not in envelope.STANDARD_FIELDS and not low.startswith("mqkit-")


#: Header names a user may send (``check_headers``), without STOMP's escaped characters.
user_names = st.text(
    alphabet=st.characters(exclude_characters="\\:\r\n", exclude_categories=["Cs"]),
    min_size=1,
    max_size=15,
).filter(_valid_name)
#: Header values as a user sends them (integers fit every transport's 64-bit field).
user_values: st.SearchStrategy[HeaderValue] = st.one_of(
    st.text(max_size=30), st.binary(max_size=30), _INT64, st.floats(), st.booleans()
)
user_headers = st.dictionaries(user_names, user_values, max_size=8)


def _same(a: HeaderValue, b: HeaderValue) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


def _assert_sane(delivery: Delivery) -> None:
    """The contract every decoded delivery keeps, whatever came in."""
    assert delivery.attempt >= 1
    assert isinstance(delivery.timestamp, float) and math.isfinite(delivery.timestamp)
    assert isinstance(delivery.id, str)
    assert delivery.key is None or isinstance(delivery.key, str)
    assert isinstance(delivery.body, bytes)
    for name, value in delivery.headers.items():
        assert isinstance(name, str)
        assert isinstance(value, str | bytes | int | float | bool)
    for field in (
        delivery.content_type,
        delivery.content_encoding,
        delivery.correlation_id,
        delivery.reply_to,
    ):
        assert field is None or isinstance(field, str)


def _outgoing(headers: dict[str, HeaderValue], key: str | None, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(
        topic="orders",
        body=body,
        key=key,
        headers=envelope.check_headers(headers),
        id="0123456789abcdef0123456789abcdef",
        timestamp=1_700_000_000.123,
        content_type="application/json",
    )


def _assert_headers_kept(sent: dict[str, HeaderValue], got: Any) -> None:
    assert set(got) == set(sent)
    for name, value in sent.items():
        assert _same(got[name], value), (name, value, got[name])


# -- Kafka ---------------------------------------------------------------------------------------

kafka_wire = pytest.importorskip("mqkit_kafka.wire")


def _record(
    headers: list[tuple[str, bytes | None]], key: bytes | None, value: bytes | None, ts: int
) -> Any:
    from kafka.consumer.fetcher import ConsumerRecord  # type: ignore[import-untyped]

    return ConsumerRecord(
        topic="orders",
        partition=0,
        leader_epoch=0,
        offset=7,
        timestamp=ts,
        timestamp_type=0,
        key=key,
        value=value,
        headers=headers,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        serialized_header_size=-1,
    )


_kafka_values = st.one_of(
    st.none(), st.binary(max_size=30), text_values.map(lambda t: t.encode("utf-8", "surrogatepass"))
)


@FUZZ
@given(
    st.lists(st.tuples(header_names, _kafka_values), max_size=10),
    st.one_of(st.none(), st.binary(max_size=20)),
    st.one_of(st.none(), bodies),
    _INT64,
)
@example([(envelope.HEADER_TYPES, b"[" * 100_000), ("a", b"1")], None, b"", 0)  # too deep
def test_kafka_decodes_any_record(
    headers: list[tuple[str, bytes | None]], key: bytes | None, value: bytes | None, ts: int
) -> None:
    delivery = kafka_wire.decode("orders", 0, _record(headers, key, value, ts), 1, None)
    _assert_sane(delivery)


@FUZZ
@given(user_headers, st.one_of(st.none(), st.text(max_size=20)), st.binary(max_size=50))
def test_kafka_keeps_what_mqkit_sends(
    headers: dict[str, HeaderValue], key: str | None, body: bytes
) -> None:
    message = _outgoing(headers, key, body)
    raw_key, raw_headers, ts = kafka_wire.encode(message)
    delivery = kafka_wire.decode("orders", 0, _record(raw_headers, raw_key, body, ts), 1, None)
    _assert_headers_kept(headers, delivery.headers)
    assert (delivery.key, delivery.body, delivery.id) == (key, body, message.id)


@FUZZ
@given(st.binary(max_size=30))
@example(b"\xff")  # not UTF-8: re-sending it (a retry copy, a dead letter) raised
def test_kafka_sends_a_received_key_back_byte_for_byte(key: bytes) -> None:
    received = kafka_wire.decode("orders", 0, _record([], key, b"", 0), 1, None)
    assert kafka_wire.encode(_outgoing({}, received.key, b""))[0] == key


# -- ActiveMQ (STOMP) ----------------------------------------------------------------------------

activemq_wire = pytest.importorskip("mqkit_activemq.wire")

_stomp_names = st.one_of(
    header_names,
    st.sampled_from(["redelivered", "timestamp", "message-id", "reply-to", "mqkit-h-", "JMSType"]),
)


@FUZZ
@given(st.dictionaries(_stomp_names, text_values, max_size=12), bodies)
@example({"timestamp": "9" * 400}, b"")  # overflowed float division in decode_timestamp
@example({envelope.HEADER_TYPES: "[" * 100_000, "a": "1"}, b"")  # JSON nested too deep
def test_activemq_decodes_any_frame(headers: dict[str, str], body: bytes) -> None:
    _assert_sane(activemq_wire.decode("orders", body, headers, None))


def _as_received(sent: dict[str, str]) -> dict[str, str]:
    """What ActiveMQ hands back on MESSAGE: the SEND headers plus some of its own."""
    return {**sent, "message-id": "ID:1", "priority": "4", "destination": "/queue/x"}


@FUZZ
@given(user_headers, st.one_of(st.none(), st.text(max_size=20)), st.binary(max_size=50))
def test_activemq_keeps_what_mqkit_sends(
    headers: dict[str, HeaderValue], key: str | None, body: bytes
) -> None:
    message = _outgoing(headers, key, body)
    frame = _as_received(activemq_wire.encode(message))
    delivery = activemq_wire.decode("orders", body, frame, None)
    _assert_headers_kept(headers, delivery.headers)
    assert (delivery.key, delivery.id) == (key, message.id)


# -- RabbitMQ (AMQP 0-9-1) -----------------------------------------------------------------------

rabbit_wire = pytest.importorskip("mqkit_rabbitmq.wire")
import pika.spec  # noqa: E402

_amqp_scalars = st.one_of(
    st.none(),
    st.booleans(),
    _INT64,
    st.floats(),
    st.decimals(),
    st.datetimes(),
    st.text(max_size=20),
    st.binary(max_size=20),
    text_values,
)
#: What pika may hand over in a headers table: nested tables and arrays of AMQP's types.
amqp_values = st.recursive(
    _amqp_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_amqp_names = st.one_of(header_names, st.just(rabbit_wire.DELIVERY_COUNT))


@FUZZ
@given(
    st.one_of(st.none(), st.dictionaries(_amqp_names, amqp_values, max_size=8)),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.one_of(st.none(), st.text(max_size=20)),
    st.booleans(),
    st.one_of(st.none(), st.text(max_size=10)),
)
@example({rabbit_wire.DELIVERY_COUNT: decimal.Decimal("Infinity")}, None, None, None, False, "")
@example({rabbit_wire.DELIVERY_COUNT: -5}, None, None, None, False, "")  # attempt would be < 1
@example({envelope.TIMESTAMP: datetime.datetime(2020, 1, 1)}, None, None, None, False, "")
@example({envelope.TIMESTAMP: float("inf")}, None, None, None, False, "")
@example({envelope.TIMESTAMP: []}, None, 1, None, False, None)  # fell back to an int time
def test_rabbitmq_decodes_any_properties(
    headers: dict[str, Any] | None,
    message_id: str | None,
    timestamp: int | None,
    content_type: str | None,
    redelivered: bool,
    routing_key: str | None,
) -> None:
    method = pika.spec.Basic.Deliver(
        consumer_tag="c",
        delivery_tag=1,
        redelivered=redelivered,
        exchange="orders",
        routing_key=routing_key,
    )
    props = pika.spec.BasicProperties(
        headers=headers, message_id=message_id, timestamp=timestamp, content_type=content_type
    )
    _assert_sane(rabbit_wire.decode("orders", method, props, b"{}"))


@FUZZ
@given(amqp_values)
def test_rabbitmq_header_values_map_to_mqkit_types(value: Any) -> None:
    assert isinstance(rabbit_wire.header_value(value), str | bytes | int | float | bool)


@FUZZ
@given(user_headers, st.one_of(st.none(), st.text(max_size=20)), st.binary(max_size=50))
def test_rabbitmq_keeps_what_mqkit_sends_through_the_wire_format(
    headers: dict[str, HeaderValue], key: str | None, body: bytes
) -> None:
    message = _outgoing(headers, key, body)
    props = pika.spec.BasicProperties()
    props.decode(b"".join(rabbit_wire.properties(message).encode()))  # AMQP's own encoding
    method = pika.spec.Basic.Deliver("c", 1, False, "orders", "rk")
    delivery = rabbit_wire.decode("orders", method, props, body)
    _assert_headers_kept(headers, delivery.headers)
    assert (delivery.key, delivery.id) == (key, message.id)


# -- RocketMQ ------------------------------------------------------------------------------------

rocket_wire = pytest.importorskip("mqkit_rocketmq.wire")

_json_garbage = st.one_of(
    text_values,
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=6,
    ).map(json.dumps),
)
_rocket_names = st.one_of(
    header_names, st.sampled_from([rocket_wire.NATIVE_CORRELATION_ID, "KEYS", "TAGS"])
)


@FUZZ
@given(
    st.dictionaries(_rocket_names, _json_garbage, max_size=10),
    bodies,
    st.one_of(st.none(), st.text(max_size=10)),
    _INT64,
)
@example({rocket_wire.HEADERS: "{"}, b"", None, 0)  # not JSON
@example({rocket_wire.HEADERS: "[1]"}, b"", None, 0)  # JSON, not an object
@example({rocket_wire.HEADER_NAMES: "5"}, b"", None, 0)  # not a list
@example({rocket_wire.HEADER_NAMES: "[{}]"}, b"", None, 0)  # names that are not str
@example({envelope.KEY: "7"}, b"", None, 0)  # a key that is not a JSON string
@example({envelope.KEY: "{"}, b"", None, 0)
@example({rocket_wire.HEADERS: '{"content-type": 5}'}, b"", None, 0)
def test_rocketmq_decodes_any_properties(
    props: dict[str, str], body: bytes, group: str | None, born_ms: int
) -> None:
    decoded = rocket_wire.decode(
        body, props, message_group=group, message_id="RMQ-1", born_ms=born_ms
    )
    _assert_sane(
        Delivery(
            topic="orders",
            body=decoded.body,
            key=decoded.key,
            headers=decoded.headers,
            id=decoded.id,
            timestamp=decoded.timestamp,
            attempt=1,
            content_type=decoded.content_type,
            content_encoding=decoded.content_encoding,
            correlation_id=decoded.correlation_id,
            reply_to=decoded.reply_to,
        )
    )


@FUZZ
@given(user_headers, st.one_of(st.none(), st.text(max_size=80)), st.binary(max_size=50))
def test_rocketmq_keeps_what_mqkit_sends(
    headers: dict[str, HeaderValue], key: str | None, body: bytes
) -> None:
    message = _outgoing(headers, key, body)
    encoded = rocket_wire.encode(message, timestamp=True)
    decoded = rocket_wire.decode(
        encoded.body,
        encoded.properties,
        message_group=encoded.message_group,
        message_id="RMQ-1",
        born_ms=1_700_000_000_000,
    )
    _assert_headers_kept(headers, decoded.headers)
    assert (decoded.key, decoded.body, decoded.id) == (key, body, message.id)


def test_rocketmq_unkeyed_message_in_a_message_group_has_no_key() -> None:
    """mqkit writes ``null`` as the key of an unkeyed message it sends to a FIFO topic under
    a message group of its own: it decodes to no key, not to the text ``null``."""
    decoded = rocket_wire.decode(
        b"{}", {envelope.KEY: "null"}, message_group="g-1", message_id="RMQ-1", born_ms=0
    )
    assert decoded.key is None
    assert (
        rocket_wire.decode(
            b"{}", {envelope.KEY: '"customer-7"'}, message_group=None, message_id="RMQ-1", born_ms=0
        ).key
        == "customer-7"
    )
