"""The envelope on a RocketMQ message (``mqkit_rocketmq.wire``), without a broker: what both
drivers write and how they read mqkit's and other clients' messages."""

from __future__ import annotations

import json

from mqkit_rocketmq import wire

from mqkit import envelope
from mqkit.message import OutgoingMessage


def _message(**fields: object) -> OutgoingMessage:
    values: dict[str, object] = {
        "topic": "orders.created",
        "body": b"{}",
        "key": None,
        "headers": {},
        "id": "0" * 32,
        "timestamp": 1_700_000_000.123,
    }
    values.update(fields)
    return OutgoingMessage(**values)  # type: ignore[arg-type]


def _read(encoded: wire.Encoded, **fields: object) -> wire.Decoded:
    kwargs: dict[str, object] = {"message_group": encoded.message_group, "message_id": "RMQ-1"}
    kwargs.update(fields)
    born = int(kwargs.pop("born_ms", 1_700_000_000_000))  # type: ignore[call-overload]
    return wire.decode(encoded.body, encoded.properties, born_ms=born, **kwargs)  # type: ignore[arg-type]


def test_own_properties_use_the_envelope_names_under_mqkits_prefix() -> None:
    encoded = wire.encode(_message(body=b"", headers={"a": ""}), timestamp=True)
    assert set(encoded.properties) == {envelope.ID, envelope.TIMESTAMP, wire.HEADERS, wire.EMPTY}
    assert all(name.startswith(envelope.PREFIX) for name in wire.OWN_PROPERTIES)
    assert encoded.properties[envelope.TIMESTAMP] == "1700000000123"


def test_key_is_the_message_group_natively_and_the_envelope_key_only_when_it_cannot_be() -> None:
    plain = wire.encode(_message(key="customer-7"), timestamp=False)
    assert plain.message_group == "customer-7" and envelope.KEY not in plain.properties
    assert _read(plain).key == "customer-7"
    odd = wire.encode(_message(key="k" * 80), timestamp=False)
    assert odd.message_group != "k" * 80
    assert json.loads(odd.properties[envelope.KEY]) == "k" * 80
    assert _read(odd).key == "k" * 80


def test_headers_round_trip_helper_fields_included() -> None:
    headers = {"source": "shop", envelope.RETRY_ATTEMPTS: "2"}
    encoded = wire.encode(_message(headers=headers), timestamp=True)
    assert encoded.properties["source"] == "shop"  # a plain property for other clients
    decoded = _read(encoded)
    assert decoded.headers == headers
    assert (decoded.id, decoded.timestamp) == ("0" * 32, 1_700_000_000.123)


def test_without_the_timestamp_property_the_born_time_is_the_send_time() -> None:
    encoded = wire.encode(_message(), timestamp=False)
    assert envelope.TIMESTAMP not in encoded.properties
    assert _read(encoded, born_ms=1_700_000_000_456).timestamp == 1_700_000_000.456


def test_another_clients_message_takes_the_brokers_id_and_its_properties_as_headers() -> None:
    decoded = wire.decode(
        b"x",
        {"origin": "java-shop", "KEYS": "order-42", "__SHARDINGKEY": "g1", "UNIQ_KEY": "U"},
        message_group="g1",
        message_id="7F0000010001",
        born_ms=1_700_000_000_000,
    )
    assert decoded.id == "7F0000010001"  # not the message keys: they are not unique
    assert decoded.headers == {"origin": "java-shop"}
    assert (decoded.key, decoded.timestamp) == ("g1", 1_700_000_000.0)


def test_standard_fields_are_properties_of_the_standard_names() -> None:
    encoded = wire.encode(
        _message(
            content_type="application/json",
            content_encoding="gzip",
            correlation_id="corr-1",
            reply_to="replies.here",
        ),
        timestamp=True,
    )
    assert encoded.properties[envelope.CONTENT_TYPE] == "application/json"
    assert encoded.properties[envelope.CONTENT_ENCODING] == "gzip"
    assert encoded.properties[envelope.CORRELATION_ID] == "corr-1"
    assert encoded.properties[envelope.REPLY_TO] == "replies.here"
    decoded = _read(encoded)
    assert (decoded.content_type, decoded.content_encoding) == ("application/json", "gzip")
    assert (decoded.correlation_id, decoded.reply_to) == ("corr-1", "replies.here")
    assert decoded.headers == {}


def test_typed_headers_are_text_properties_with_their_types_alongside() -> None:
    headers = {"n": 7, "r": 1.5, "b": True, "raw": b"\xff\x00", "s": "x", "empty": ""}
    encoded = wire.encode(_message(headers=headers), timestamp=True)
    props = encoded.properties
    # what a plain client reads: text, bytes in base64
    assert (props["n"], props["r"], props["b"], props["raw"], props["s"]) == (
        "7",
        "1.5",
        "true",
        "/wA=",
        "x",
    )
    assert json.loads(props[envelope.HEADER_TYPES]) == {
        "n": "int",
        "r": "float",
        "b": "bool",
        "raw": "bytes",
    }
    # an empty value cannot be a property (the broker drops it): only it travels packed
    assert "empty" not in props and json.loads(props[wire.HEADERS]) == {"empty": ""}
    decoded = _read(encoded)
    assert decoded.headers == headers
    assert {k: type(v) for k, v in decoded.headers.items()} == {
        k: type(v) for k, v in headers.items()
    }


def test_a_correlation_id_rocketmq_cannot_carry_alone_still_arrives() -> None:
    encoded = wire.encode(_message(correlation_id="a\x01b"), timestamp=True)
    assert envelope.CORRELATION_ID not in encoded.properties
    assert _read(encoded).correlation_id == "a\x01b"


def test_another_clients_standard_fields_and_rocketmqs_own_correlation_id() -> None:
    decoded = wire.decode(
        b"{}",
        {"content-type": "application/json", "reply-to": "answers", "CORRELATION_ID": "c-9"},
        message_group=None,
        message_id="7F0000010002",
        born_ms=0,
    )
    assert (decoded.content_type, decoded.reply_to) == ("application/json", "answers")
    assert decoded.correlation_id == "c-9"  # RocketMQ's request/reply property
    assert decoded.headers == {} and decoded.system == {"CORRELATION_ID": "c-9"}
