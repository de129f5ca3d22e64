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
