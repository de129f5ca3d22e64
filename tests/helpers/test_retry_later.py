"""RetryLater through the retry middleware: given back without counting an attempt, never dead."""

from __future__ import annotations

import threading
import time
import uuid

import mqkit
from mqkit.deadletter import dead_letter_topic
from mqkit.errors import RetryLater
from mqkit.helpers import RetryPolicy, retry
from tests.helpers.apps import running


def test_retry_later_is_rescheduled_without_an_attempt_and_never_dead_lettered() -> None:
    app = mqkit.App(f"memory://{uuid.uuid4().hex}")
    # One attempt only: any ordinary failure would be dead-lettered at once.
    mw = retry(RetryPolicy.fixed(0.05, max_attempts=1), via="topics")
    seen: list[int] = []
    done = threading.Event()

    @app.handler("jobs", group="workers", middleware=[mw])
    def handle(message: mqkit.Message) -> None:
        seen.append(message.attempt)
        if len(seen) < 3:
            raise RetryLater("not yet", retry_after=0.05)
        done.set()

    dlq = app.broker.consumer(dead_letter_topic("workers"), group="watch", serializer="bytes")
    with running(app):
        with app.broker.producer() as producer:
            producer.send("jobs", {"n": 1})
        assert done.wait(10), f"handler calls: {seen}"
        time.sleep(0.2)
        assert dlq.receive(timeout=0.2) is None, "a RetryLater must not be dead-lettered"
    assert seen == [1, 1, 1], "RetryLater does not count an attempt"
    assert (mw.stats.dead_lettered, mw.stats.retried) == (0, 0)


def test_a_short_backoff_is_not_stuck_behind_a_long_one_in_the_retry_topic() -> None:
    """One retry topic per group: the relay hands out copies by due time, not arrival."""
    app = mqkit.App(f"memory://{uuid.uuid4().hex}")
    mw = retry(RetryPolicy.fixed(0.05, max_attempts=1), via="topics")
    retried_at: dict[str, float] = {}
    tried: set[str] = set()
    both = threading.Event()

    @app.handler("jobs", group="workers", middleware=[mw])
    def handle(message: mqkit.Message) -> None:
        name = message.value["name"]
        if name not in tried:
            tried.add(name)
            raise RetryLater("not yet", retry_after=3.0 if name == "slow" else 0.1)
        retried_at[name] = time.monotonic()
        if len(retried_at) == 2:
            both.set()

    with running(app):
        start = time.monotonic()
        with app.broker.producer() as producer:
            producer.send("jobs", {"name": "slow"})
            producer.flush()
            time.sleep(0.3)  # the slow copy is in the retry topic first
            producer.send("jobs", {"name": "fast"})
        assert both.wait(15), f"retried: {retried_at}"
    assert retried_at["fast"] - start < 2.0, "the fast copy waited behind the slow one"
    assert retried_at["fast"] < retried_at["slow"]
