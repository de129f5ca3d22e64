"""mqkit.testing.TestClient: a sync and an async App run on memory:// for a `with` block; the
test sees what the handlers were given and what they (and the App) published."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import mqkit
from mqkit import aio
from mqkit.deadletter import dead_letter_topic
from mqkit.errors import MqkitError
from mqkit.testing import TestClient


@dataclasses.dataclass
class Order:
    id: int
    total: float


def make_sync_app() -> mqkit.App:
    app = mqkit.App("memory://not-the-test-queue")

    @app.handler("orders", group="billing")
    def bill(message: mqkit.Message) -> None:
        order = message.value
        with app.broker.producer() as producer:
            producer.send("invoices", {"order": order["id"]}, key=message.key)

    @app.handler("orders", group="audit")
    def audit(message: mqkit.Message) -> None:
        if message.value["id"] < 0:
            raise ValueError("negative id")
        message.ack()

    return app


def make_async_app() -> aio.App:
    app = aio.App("memory://not-the-test-queue")

    @app.handler("orders", group="billing")
    async def bill(order: Order) -> None:
        assert app.broker is not None
        async with app.broker.producer() as producer:
            await producer.send("invoices", {"order": order.id, "total": order.total})

    @app.handler("pings", group="pong")
    async def pong(message: aio.AsyncMessage) -> str:
        return f"pong {message.value}"

    return app


def test_sync_app_received_and_published() -> None:
    app = make_sync_app()
    with TestClient(app) as client:
        client.publish("orders", {"id": 1}, key="c-7", headers={"tenant": "t1"})
        client.publish("orders", {"id": 2}, key="c-8")
        received = client.received("billing")
        assert [m.value for m in received] == [{"id": 1}, {"id": 2}]
        assert received[0].headers == {"tenant": "t1"}
        assert received[0].key == "c-7"
        invoices = client.published("invoices")
        assert [(m.value, m.key) for m in invoices] == [
            ({"order": 1}, "c-7"),
            ({"order": 2}, "c-8"),
        ]
        assert [m.value for m in client.received("audit")] == [{"id": 1}, {"id": 2}]
        assert [m.value for m in client.published("orders")] == [{"id": 1}, {"id": 2}]
        with pytest.raises(MqkitError):
            invoices[0].ack()
    assert app.broker.url.host == "not-the-test-queue"  # the app is back on its own broker


def test_sync_app_dead_letters_are_visible() -> None:
    app = make_sync_app()
    with TestClient(app) as client:
        client.publish("orders", b"\xff not json", content_type="application/json")
        assert client.received("billing") == []  # never reached the handler
        [dead] = client.published(dead_letter_topic("billing"))
        assert dead.body == b"\xff not json"


def test_async_app_received_published_and_replies() -> None:
    app = make_async_app()
    with TestClient(app) as client:
        client.publish("orders", {"id": 3, "total": 9.5})
        [message] = client.received("billing")
        assert message.value == Order(3, 9.5)  # as the handler got it: validated
        assert [m.value for m in client.published("invoices")] == [{"order": 3, "total": 9.5}]
        client.publish("pings", "hi", reply_to="answers", correlation_id="c-1")
        [answer] = client.published("answers")
        assert (answer.value, answer.correlation_id) == ("pong hi", "c-1")
    assert app.broker is None  # as before the block: an App(url) connects when it runs


def test_each_client_has_its_own_queue() -> None:
    app = make_async_app()
    with TestClient(app) as client:
        client.publish("orders", {"id": 1, "total": 1.0})
        assert len(client.received("billing")) == 1
    with TestClient(app) as client:
        assert client.received("billing") == []
        assert client.published("invoices") == []


def test_a_handler_that_always_fails_times_out_waiting() -> None:
    app = make_sync_app()
    with TestClient(app) as client:
        client.publish("orders", {"id": -1})
        with pytest.raises(TimeoutError, match="audit"):
            client.received("audit", timeout=0.5)
        app.stop()  # lets the block end: the failing message is redelivered forever


def test_unknown_group_and_use_outside_the_block() -> None:
    app = make_sync_app()
    client = TestClient(app)
    with pytest.raises(RuntimeError):
        client.publish("orders", {"id": 1})
    with client, pytest.raises(KeyError, match="billing"):
        client.received("nobody")


def test_an_app_that_cannot_start_raises_on_enter() -> None:
    app = aio.App("memory://x")  # no handler: run() refuses
    with pytest.raises(MqkitError, match="no handler"), TestClient(app):
        pass
    assert threading.active_count() < 50
