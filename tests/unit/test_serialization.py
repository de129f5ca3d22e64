from __future__ import annotations

import pickle

import pytest

import mqkit
from mqkit import ConfigError, FunctionSerializer
from mqkit.serialization import get_serializer


def test_builtin_serializers() -> None:
    assert get_serializer(None).loads(get_serializer(None).dumps({"a": "é"})) == {"a": "é"}
    assert get_serializer("json").dumps({"a": 1}) == b'{"a":1}'
    assert get_serializer("bytes").dumps(bytearray(b"x")) == b"x"
    assert get_serializer("text").loads("ü".encode()) == "ü"


def test_wrong_value_types_explain_the_fix() -> None:
    with pytest.raises(TypeError, match="serializer='bytes'"):
        get_serializer("json").dumps(b"raw")
    with pytest.raises(TypeError, match="sends bytes"):
        get_serializer("bytes").dumps("text")
    with pytest.raises(ConfigError, match="unknown serializer"):
        get_serializer("yaml")
    with pytest.raises(ConfigError, match="dumps"):
        get_serializer(object())  # type: ignore[arg-type]


def test_user_supplied_serializer_round_trips() -> None:
    ser = FunctionSerializer(pickle.dumps, pickle.loads)
    with mqkit.connect("memory://ser", serializer=ser) as broker:
        consumer = broker.consumer("t", group="g")
        with broker.producer() as producer:
            producer.send("t", {1, 2, 3})
        message = consumer.receive(timeout=5)
        assert message is not None and message.value == {1, 2, 3}
        message.ack()
