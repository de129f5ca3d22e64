"""Typed payloads: the JSON encoding of Python types JSON lacks, and validation into models
(dataclasses without dependencies, pydantic when installed), sync and async."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import threading
import uuid
from decimal import Decimal
from typing import Any, Literal

import pytest

import mqkit
from mqkit import ConfigError, DecodeError, JsonSerializer, aio
from mqkit.testing.aio import run
from mqkit.typing_payloads import to_model


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float = 0.0


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    at: dt.date
    tags: dict[str, int]
    kind: Literal["open", "closed"]
    colour: Colour | None = None
    extra: Any = None


def test_encoding_rules() -> None:
    dumps = JsonSerializer().dumps
    assert dumps(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == b'"2026-01-02T03:04:05+00:00"'
    assert dumps(dt.date(2026, 1, 2)) == b'"2026-01-02"'
    assert dumps(Decimal("0.10")) == b'"0.10"'
    assert dumps(uuid.UUID(int=1)) == b'"00000000-0000-0000-0000-000000000001"'
    assert dumps(Colour.RED) == b'"red"'
    assert dumps(Point(1, 2)) == b'{"x":1,"y":2}'
    with pytest.raises(ValueError, match="NaN"):
        dumps([1.0, float("inf")])
    with pytest.raises(ValueError, match="not a number"):
        dumps(Decimal("NaN"))
    assert JsonSerializer(allow_nan=True).dumps(float("nan")) == b"NaN"
    with pytest.raises(TypeError, match="not JSON"):
        dumps(object())


def test_dataclasses_validate_field_by_field() -> None:
    shape = Shape("tri", [Point(0, 1), Point(2)], dt.date(2026, 1, 2), {"a": 1}, "closed")
    assert to_model(Shape, json.loads(JsonSerializer().dumps(shape))) == shape
    good = {"name": "n", "points": [], "at": "2026-01-02", "tags": {}, "kind": "open"}
    assert to_model(Shape, {**good, "colour": "red"}).colour is Colour.RED
    for bad, match in [
        ({**good, "points": [{"x": "1"}]}, r"Shape.points\[0\].x: expected float"),
        ({**good, "kind": "half"}, "not one of"),
        ({**good, "colour": "blue"}, "fits none"),
        ({**good, "surprise": 1}, "unknown field"),
        ({k: v for k, v in good.items() if k != "name"}, "missing field 'name'"),
        ({**good, "tags": {"a": True}}, "expected int, got bool"),
        ([1], "expected an object"),
    ]:
        with pytest.raises((TypeError, ValueError), match=match):
            to_model(Shape, bad)


def test_a_model_that_is_not_one_is_a_config_error() -> None:
    with mqkit.connect("memory://typed-config") as broker, pytest.raises(ConfigError):
        broker.consumer("t", group="g", model=dict)


def test_sync_consumer_validates_into_the_model(topic: str, group: str) -> None:
    with mqkit.connect("memory://typed-sync") as broker:
        consumer = broker.consumer(topic, group=group, model=Point)
        with broker.producer() as producer:
            producer.send(topic, Point(1.5, 2))
            producer.send(topic, {"x": "left"})
        good = consumer.receive(timeout=5)
        bad = consumer.receive(timeout=5)
        assert good is not None and good.value == Point(1.5, 2.0)
        assert bad is not None and isinstance(bad.error, DecodeError)
        assert "validated as Point" in str(bad.error)


def test_pydantic_models_both_ways(topic: str, group: str) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        sku: str
        price: Decimal
        at: dt.datetime

    item = Item(sku="a", price=Decimal("1.20"), at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    async def main() -> None:
        async with aio.connect("memory://typed-pydantic") as broker:
            consumer = await broker.consumer(topic, group=group, model=Item)
            async with broker.producer() as producer:
                await producer.send(topic, item)
                await producer.send(topic, {"sku": "b", "price": "x", "at": "now"})
            good = await consumer.receive(timeout=5)
            bad = await consumer.receive(timeout=5)
            assert good is not None and good.value == item
            assert json.loads(good.body)["price"] == "1.20"
            assert bad is not None and isinstance(bad.error, DecodeError)
            assert "ValidationError" in str(bad.error)

    run(main)


def test_the_app_dead_letters_a_value_that_does_not_fit_at_once(topic: str, group: str) -> None:
    from mqkit import App, deadletter

    handled: list[Point] = []
    app = App("memory://typed-app")
    try:

        @app.handler(topic, group=group, model=Point)
        def handle(message: mqkit.Message) -> None:
            handled.append(message.value)

        def produce() -> None:
            with app.broker.producer() as producer:
                producer.send(topic, {"x": "not a number"}, key="k")
                producer.send(topic, Point(3, 4), key="k")

        threading.Timer(0.5, app.stop).start()
        app.run(install_signal_handlers=False, on_ready=produce)
        assert handled == [Point(3.0, 4.0)]
        assert app.stats(group).dead_lettered == 1
        dead = deadletter.dead_letter_consumer(app.broker, group).receive(timeout=5)
        assert dead is not None
        assert dead.headers[deadletter.ATTEMPT] in (1, "1")
        assert dead.headers[deadletter.ERROR_TYPE] == "DecodeError"
        assert "Point.x: expected float" in str(dead.headers[deadletter.ERROR])
    finally:
        app.close()
