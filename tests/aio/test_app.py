"""``mqkit.aio.App``: async handlers, per-key order under concurrency, nack and redelivery,
dead letters, request/reply and a graceful stop, on a loop that fails the test when blocked."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from pathlib import Path

import pytest

from mqkit import aio, deadletter
from mqkit.testing.aio import collect, run


@pytest.fixture(params=["memory", "sqlite"])
def app_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://app-{tmp_path.name}"
    return f"sqlite:///{tmp_path / 'q.db'}?poll_interval=0.01"


@dataclasses.dataclass
class Job:
    n: int


def test_handlers_keep_key_order_and_run_keys_concurrently(
    app_url: str, topic: str, group: str
) -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    running = 0
    most = 0
    app = aio.App(app_url)

    @app.handler(topic, group=group, concurrency=8, model=Job)
    async def handle(message: aio.AsyncMessage) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.005)
        seen[message.key or ""].append(message.value.n)
        running -= 1
        if sum(map(len, seen.values())) == 80:
            app.stop()

    async def produce() -> None:
        assert app.broker is not None
        async with app.broker.producer() as producer:
            for n in range(20):
                for k in range(4):
                    await producer.send(topic, Job(n), key=f"k{k}")

    run(lambda: asyncio.wait_for(app.run(on_ready=produce, install_signal_handlers=False), 60))
    assert {k: v for k, v in seen.items()} == {f"k{k}": list(range(20)) for k in range(4)}
    assert 1 < most <= 8
    assert app.stats(group).processed == 80


def test_a_failed_handler_nacks_and_the_message_comes_back_in_order(
    app_url: str, topic: str, group: str
) -> None:
    order: list[tuple[int, int]] = []
    app = aio.App(app_url)

    @app.handler(topic, group=group, concurrency=4)
    async def handle(message: aio.AsyncMessage) -> None:
        order.append((message.value, message.attempt))
        if message.value == 1 and message.attempt == 1:
            raise RuntimeError("first try fails")
        if len(order) >= 5 and message.value == 3:
            app.stop()

    async def produce() -> None:
        assert app.broker is not None
        async with app.broker.producer() as producer:
            for n in range(4):
                await producer.send(topic, n, key="same")

    run(lambda: asyncio.wait_for(app.run(on_ready=produce, install_signal_handlers=False), 60))
    # The messages behind the failed one were given back too, so the key's order holds.
    assert [value for value, _ in order] == [0, 1, 1, 2, 3]
    assert order[:2] == [(0, 1), (1, 1)] and order[2][1] >= 2
    assert app.stats(group).failed == 1


def test_undecodable_messages_go_to_the_dead_letters_and_requests_get_replies(
    app_url: str, topic: str, group: str
) -> None:
    app = aio.App(app_url)

    @app.handler(topic, group=group, model=Job)
    async def double(message: aio.AsyncMessage) -> dict[str, int]:
        return {"double": message.value.n * 2}

    async def main() -> None:
        async with aio.connect(app_url) as broker:
            app.broker = broker
            answers: list[aio.AsyncMessage] = []

            async def client() -> None:
                async with broker.producer() as producer:
                    await producer.send(topic, {"n": "two"})
                    answers.append(await producer.request(topic, Job(21), timeout=30))
                app.stop()

            await asyncio.wait_for(app.run(on_ready=client, install_signal_handlers=False), 60)
            assert [a.value for a in answers] == [{"double": 42}]
            dead = await broker.consumer(
                deadletter.dead_letter_topic(group), group=deadletter.dead_letter_group(group)
            )
            [letter] = await collect(dead, 1)
            assert letter.headers[deadletter.ERROR_TYPE] == "DecodeError"
            assert "Job.n: expected int" in str(letter.headers[deadletter.ERROR])

    run(main)
    assert app.stats(group).dead_lettered == 1 and app.stats(group).processed == 1


def test_stop_lets_running_handlers_finish_and_gives_back_the_rest(
    app_url: str, topic: str, group: str
) -> None:
    finished: list[int] = []
    app = aio.App(app_url)

    @app.handler(topic, group=group, concurrency=2)
    async def slow(message: aio.AsyncMessage) -> None:
        if not finished:
            app.stop()
        await asyncio.sleep(0.3)
        finished.append(message.value)

    async def main() -> None:
        async with aio.connect(app_url) as broker:
            app.broker = broker
            async with broker.producer() as producer:
                await broker.declare(topic, group=group)
                for n in range(10):
                    await producer.send(topic, n, key="one")
            await asyncio.wait_for(app.run(install_signal_handlers=False), 30)
            assert finished == [0]
            rest = await broker.consumer(topic, group=group)
            assert sorted(m.value for m in await collect(rest, 9)) == list(range(1, 10))

    run(main)


def test_sync_handlers_are_refused() -> None:
    app = aio.App("memory://")
    with pytest.raises(TypeError, match="async def"):
        app.handler("t", group="g")(lambda message: None)  # type: ignore[type-var]


def test_a_handler_annotated_with_a_model_gets_the_validated_value(
    app_url: str, topic: str, group: str
) -> None:
    got: list[Job] = []
    app = aio.App(app_url)

    @app.handler(topic, group=group)
    async def handle(job: Job) -> None:
        got.append(job)
        app.stop()

    async def produce() -> None:
        assert app.broker is not None
        async with app.broker.producer() as producer:
            await producer.send(topic, {"n": "bad"})
            await producer.send(topic, Job(5))

    run(lambda: asyncio.wait_for(app.run(on_ready=produce, install_signal_handlers=False), 60))
    assert got == [Job(5)]
    assert app.stats(group).dead_lettered == 1


def test_a_refused_dead_letter_gives_the_message_back(
    app_url: str, topic: str, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async App: a dead letter the broker refuses leaves the undecodable message given
    back (counted as failed) and the app consuming; the next delivery is dead-lettered."""
    import mqkit.aio.app

    real, refusals = deadletter.send_dead_letter, [1]

    def refuse_once(*args: object, **kwargs: object) -> object:
        if refusals:
            refusals.pop()
            raise RuntimeError("the broker refused the dead letter")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mqkit.aio.app, "send_dead_letter", refuse_once)
    app = aio.App(app_url)
    seen: list[object] = []

    @app.handler(topic, group=group, model=Job)
    async def handle(message: aio.AsyncMessage) -> None:
        seen.append(message.value.n)

    async def main() -> None:
        async with aio.connect(app_url) as broker:
            app.broker = broker

            async def client() -> None:
                async with broker.producer() as producer:
                    await producer.send(topic, {"n": "two"})
                    await producer.send(topic, {"n": 3})
                for _ in range(500):
                    if seen and app.stats(group).dead_lettered:
                        break
                    await asyncio.sleep(0.02)
                app.stop()

            await asyncio.wait_for(app.run(on_ready=client, install_signal_handlers=False), 60)

    run(main)
    stats = app.stats(group)
    assert seen == [3]
    assert (stats.failed, stats.dead_lettered, stats.processed) == (1, 1, 1)
