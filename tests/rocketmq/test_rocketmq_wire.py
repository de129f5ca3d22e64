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
    assert set(encoded.properties) == {
        envelope.ID, envelope.TIMESTAMP, wire.HEADERS, wire.EMPTY
    }
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
