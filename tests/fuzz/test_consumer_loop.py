"""An app on the embedded backends under hostile input: bodies that are not the JSON they say
they are, and garbage in the retry and dead-letter headers, mixed with good messages, on the
topic and on the group's retry topic. Every good message is processed, every undecodable one is
dead-lettered, and nothing stops the app."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mqkit
from mqkit import envelope
from mqkit.deadletter import DeadLetter, dead_letter_topic
from mqkit.envelope import HeaderValue
from mqkit.helpers.retry import RetryPolicy, retry, retry_topic

from .strategies import NASTY_TEXT

_runs = itertools.count()

#: A due time that is garbage, never a finite time in the future (which would hold a copy).
_BAD_DUE = st.sampled_from(["", "x", "nan", "inf", "-inf", "-1", "1e999", "9" * 400])
_helper_names = st.sampled_from(sorted(envelope.HELPER_FIELDS - {envelope.RETRY_DUE}))
_values: st.SearchStrategy[HeaderValue] = st.one_of(
    NASTY_TEXT.filter(lambda t: "\ud800" not in t),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
)
_headers = st.builds(
    lambda helpers, due, user: {**helpers, **({envelope.RETRY_DUE: due} if due else {}), **user},
    st.dictionaries(_helper_names, _values, max_size=5),
    st.one_of(st.none(), _BAD_DUE),
    st.dictionaries(st.sampled_from(["trace", "x", "tenant"]), _values, max_size=2),
)


def _undecodable(body: bytes) -> bool:
    try:
        json.loads(body)
    except Exception:
        return True
    return False


_bad_bodies = st.one_of(
    st.binary(max_size=50),
    st.sampled_from([b"", b"{", b"[" * 5000, b"\xff\xfe", b"nul", b'{"a": 1']),
).filter(_undecodable)
#: (good?, body, headers, to the retry topic?)
_message = st.one_of(
    st.tuples(st.just(True), st.integers(), _headers, st.booleans()),
    st.tuples(st.just(False), _bad_bodies, _headers, st.booleans()),
)


def _run_in_thread(app: mqkit.App) -> threading.Thread:
    ready = threading.Event()
    thread = threading.Thread(
        target=app.run, kwargs={"install_signal_handlers": False, "on_ready": ready.set}
    )
    thread.start()
    assert ready.wait(10)
    return thread


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
@settings(max_examples=6, deadline=None)
@given(st.lists(_message, min_size=1, max_size=12))
# copies on the retry topic due at an infinite or NaN time were held by the relay forever
@example(
    batch=[
        (True, 1, {envelope.RETRY_DUE: "nan"}, True),
        (False, b"", {envelope.RETRY_DUE: "inf"}, True),
    ]
)
def test_an_app_processes_good_messages_and_dead_letters_undecodable_ones(
    backend: str, batch: list[tuple[bool, Any, dict[str, HeaderValue], bool]]
) -> None:
    n = next(_runs)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"memory://hostile-{n}" if backend == "memory" else f"sqlite:///{tmp}/hostile.db"
        app = mqkit.App(url)
        seen: list[bytes] = []

        @app.handler(
            "orders",
            group="billing",
            middleware=[retry(RetryPolicy.fixed(0.05, max_attempts=3), via="topics")],
        )
        def handle(message: mqkit.Message) -> None:
            assert message.attempt >= 1
            assert isinstance(message.value, int)
            seen.append(message.body)

        dlq = app.broker.consumer(dead_letter_topic("billing"), group="ops", serializer="bytes")
        thread = _run_in_thread(app)
        good: list[bytes] = []
        bad: list[bytes] = []
        try:
            with app.broker.producer(serializer="bytes") as producer:
                for is_good, body, headers, to_retry in batch:
                    raw = json.dumps(body).encode() if is_good else body
                    (good if is_good else bad).append(raw)
                    producer.send(
                        retry_topic("billing") if to_retry else "orders",
                        raw,
                        headers=headers,
                        content_type="application/json",
                    )
            dead: list[mqkit.Message] = []
            deadline = time.monotonic() + 20
            while (len(seen) < len(good) or len(dead) < len(bad)) and time.monotonic() < deadline:
                message = dlq.receive(timeout=0.05)
                if message is not None:
                    dead.append(message)
                    message.ack()
            assert app.alive
        finally:
            app.stop()
            thread.join(10)
            app.close()
    assert Counter(seen) == Counter(good)
    assert Counter(m.body for m in dead) == Counter(bad)
    for message in dead:
        info = DeadLetter.of(message)
        assert info.error_type == "DecodeError"
        assert info.attempt >= 0 and math.isfinite(info.time)
