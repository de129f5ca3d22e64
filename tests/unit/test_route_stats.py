"""App.stats counts what happened to each message once: a message the retry middleware
dead-lettered is not "processed", a duplicate the idempotency helper skipped neither
(sync App with broker delay and retry topics, and the async App)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

import mqkit
from mqkit import aio
from mqkit.envelope import IDEMPOTENCY_KEY
from mqkit.helpers import MemoryStore, RetryPolicy, idempotent, retry
from tests.helpers.apps import running


@pytest.fixture(params=["memory", "sqlite"])
def app_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://stats-{uuid.uuid4().hex[:8]}"
    return f"sqlite:///{tmp_path / 'q.db'}?poll_interval=0.01"


def _wait(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    assert check(), "timed out"  # type: ignore[operator]


@pytest.mark.parametrize("via", ["auto", "topics"])
def test_a_dead_lettered_message_is_not_processed(app_url: str, topic: str, via: str) -> None:
    """The issue's case: 8 messages fine, one dead-lettered by the retry middleware."""
    app = mqkit.App(app_url)
    store = MemoryStore()
    mw = retry(RetryPolicy.fixed(0.01, max_attempts=3), via=via)  # type: ignore[arg-type]

    @app.handler(topic, group="fraud", middleware=[mw, idempotent(store)])
    def check(message: mqkit.Message) -> None:
        if message.value == "bad":
            raise ValueError("suspicious")

    with running(app):
        with app.broker.producer() as producer:
            for i in range(8):
                producer.send(topic, i, headers={IDEMPOTENCY_KEY: f"k{i}"})
            producer.send(topic, "bad")
            # Two duplicates of what was processed: skipped, not run, not "processed".
            producer.send(topic, 0, headers={IDEMPOTENCY_KEY: "k0"})
            producer.send(topic, 1, headers={IDEMPOTENCY_KEY: "k1"})
        stats = app.stats("fraud")
        _wait(lambda: stats.dead_lettered == 1 and stats.processed + stats.duplicates == 10)
    assert stats.snapshot() == {
        "processed": 8,
        "failed": 3,
        "retried": 2,
        "dead_lettered": 1,
        "duplicates": 2,
        "deferred": 0,
    }
    assert (mw.stats.retried, mw.stats.dead_lettered) == (2, 1)


def test_async_app_counts_the_same(app_url: str, topic: str) -> None:
    app = aio.App(app_url)
    mw = retry(RetryPolicy.fixed(0.01, max_attempts=2), via="topics")
    done = threading.Event()

    @app.handler(topic, group="fraud", middleware=[mw, idempotent(MemoryStore())])
    async def check(message: aio.AsyncMessage) -> None:
        if message.value == "bad":
            raise ValueError("suspicious")

    async def produce() -> None:
        assert app.broker is not None
        async with app.broker.producer() as producer:
            # One key each: the async App runs a key's messages in order, so the duplicate
            # comes after the original is done (not beside it, which would defer it).
            for i in range(3):
                await producer.send(topic, i, key=f"k{i}", headers={IDEMPOTENCY_KEY: f"k{i}"})
            await producer.send(topic, "bad")
            await producer.send(topic, 2, key="k2", headers={IDEMPOTENCY_KEY: "k2"})
        stats = app.stats("fraud")
        for _ in range(1000):
            if stats.dead_lettered == 1 and stats.processed + stats.duplicates == 4:
                break
            await asyncio.sleep(0.02)
        done.set()
        app.stop()

    asyncio.run(asyncio.wait_for(app.run(on_ready=produce, install_signal_handlers=False), 30))
    assert done.is_set()
    assert app.stats("fraud").snapshot() == {
        "processed": 3,
        "failed": 2,
        "retried": 1,
        "dead_lettered": 1,
        "duplicates": 1,
        "deferred": 0,
    }
