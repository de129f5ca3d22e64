"""retry() and idempotent() on mqkit.aio.App: broker delay and retry topics, dead letters,
duplicates skipped; on memory:// and SQLite, on a loop that fails the test when blocked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mqkit import aio
from mqkit.deadletter import dead_letter_topic
from mqkit.envelope import DLQ_ERROR, IDEMPOTENCY_KEY, header_text
from mqkit.helpers import MemoryStore, RetryPolicy, idempotent, retry
from mqkit.testing import TestClient
from mqkit.testing.aio import collect, run


@pytest.fixture(params=["memory", "sqlite"])
def app_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://mw-{tmp_path.name}"
    return f"sqlite:///{tmp_path / 'q.db'}?poll_interval=0.01"


@pytest.mark.parametrize("via", ["broker", "topics"])
def test_retry_tries_again_then_succeeds(app_url: str, topic: str, group: str, via: str) -> None:
    seen: list[tuple[str, int, object]] = []
    policy = RetryPolicy.fixed(0.05, max_attempts=5)
    mw = retry(policy, via=via)  # type: ignore[arg-type]
    app = aio.App(app_url)

    @app.handler(topic, group=group, middleware=[mw])
    async def flaky(message: aio.AsyncMessage) -> None:
        seen.append((message.topic, message.attempt, message.value))
        if message.attempt < 3:
            raise RuntimeError(f"attempt {message.attempt} fails")
        app.stop()

    async def produce() -> None:
        assert app.broker is not None
        async with app.broker.producer() as producer:
            await producer.send(topic, {"n": 1}, key="k")

    run(lambda: asyncio.wait_for(app.run(on_ready=produce, install_signal_handlers=False), 30))
    # The handler always sees the original message: its topic, attempt counting every try.
    assert seen == [(topic, 1, {"n": 1}), (topic, 2, {"n": 1}), (topic, 3, {"n": 1})]
    assert mw.stats.retried == 2
    assert mw.stats.relayed == (2 if via == "topics" else 0)
    # Honest route stats: two failed tries, both retried, then one processed (whether the
    # retries came back through the broker or through the retry relay).
    stats = app.stats(group).snapshot()
    assert (stats["processed"], stats["failed"], stats["retried"]) == (1, 2, 2)
    assert stats["dead_lettered"] == 0


def test_retry_dead_letters_after_the_last_attempt(app_url: str, topic: str, group: str) -> None:
    async def main() -> None:
        mw = retry(RetryPolicy.fixed(0.01, max_attempts=2), via="topics")
        app = aio.App(app_url)
        tries: list[int] = []

        @app.handler(topic, group=group, middleware=[mw])
        async def always_fails(message: aio.AsyncMessage) -> None:
            tries.append(message.attempt)
            if len(tries) == 2:
                asyncio.get_running_loop().call_later(0.3, app.stop)
            raise ValueError("no stock")

        async def produce() -> None:
            assert app.broker is not None
            async with app.broker.producer() as producer:
                await producer.send(topic, {"n": 2})

        async with aio.connect(app_url) as broker:
            dead = await broker.consumer(dead_letter_topic(group), group="check")
            app.broker = broker
            await asyncio.wait_for(app.run(on_ready=produce, install_signal_handlers=False), 30)
            [letter] = await collect(dead, 1)
            await dead.close()
        assert tries == [1, 2]
        assert mw.stats.dead_lettered == 1
        assert letter.value == {"n": 2}
        assert "no stock" in header_text(letter.headers, DLQ_ERROR)

    run(main)


def test_idempotent_runs_a_duplicate_once_with_a_sync_store(app_url: str, topic: str) -> None:
    store = MemoryStore()
    calls: list[object] = []
    app = aio.App(app_url)

    @app.handler(topic, group="billing", middleware=[retry(), idempotent(store)])
    async def charge(message: aio.AsyncMessage) -> None:
        calls.append(message.value)

    with TestClient(app) as client:
        for _ in range(3):
            client.publish(topic, {"order": 7}, headers={IDEMPOTENCY_KEY: "order-7"})
        client.publish(topic, {"order": 8}, headers={IDEMPOTENCY_KEY: "order-8"})
        assert len(client.published(topic)) == 4
        # The handler ran once per identity; the client records what the handler was given.
        assert [m.value for m in client.received("billing")] == [{"order": 7}, {"order": 8}]
    assert calls == [{"order": 7}, {"order": 8}]


def test_testclient_sees_retry_then_dead_letter() -> None:
    app = aio.App()

    @app.handler(
        "orders", group="billing", middleware=[retry(RetryPolicy.fixed(0.01, max_attempts=3))]
    )
    async def refuse(message: aio.AsyncMessage) -> None:
        raise ValueError("card declined")

    with TestClient(app) as client:
        client.publish("orders", {"id": 1})
        attempts = [m.attempt for m in client.received("billing")]
        [dead] = client.published(dead_letter_topic("billing"))
    assert attempts == [1, 2, 3]
    assert dead.value == {"id": 1}


def test_sync_middleware_is_refused() -> None:
    app = aio.App()

    def plain(handler: object, route: object) -> object:
        return handler

    with pytest.raises(TypeError, match="wrap_async"):
        app.handler("t", group="g", middleware=[plain])  # type: ignore[list-item]
