from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mqkit
from mqkit.deadletter import ERROR_TYPE, TOPIC, dead_letter_topic


def _run_in_thread(app: mqkit.App) -> threading.Thread:
    ready = threading.Event()
    thread = threading.Thread(
        target=app.run, kwargs={"install_signal_handlers": False, "on_ready": ready.set}
    )
    thread.start()
    assert ready.wait(10)
    return thread


def test_handler_acks_on_success_and_nacks_on_exception() -> None:
    app = mqkit.App("memory://app1")
    seen: list[tuple[int, int]] = []

    @app.handler("orders", group="stock", concurrency=2)
    def handle(message: mqkit.Message) -> None:
        if message.value == 3 and message.attempt == 1:
            raise RuntimeError("transient")
        seen.append((message.value, message.attempt))

    thread = _run_in_thread(app)
    with app.broker.producer() as producer:
        for i in range(10):
            producer.send("orders", i)
    deadline = time.monotonic() + 10
    while len(seen) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    app.stop()
    thread.join()
    assert sorted(v for v, _ in seen) == list(range(10))
    assert (3, 2) in seen
    stats = app.stats("stock")
    assert (stats.processed, stats.failed) == (10, 1)
    app.close()


def test_a_refused_dead_letter_gives_the_message_back_and_the_app_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the dead letter cannot be sent (the broker refuses it), the undecodable message is
    given back, counted as failed, and the worker keeps consuming; the next try succeeds."""
    import mqkit.app
    import mqkit.deadletter

    real, refusals = mqkit.deadletter.send_dead_letter, [1]

    def refuse_once(*args: Any, **kwargs: Any) -> Any:
        if refusals:
            refusals.pop()
            raise RuntimeError("the broker refused the dead letter")
        return real(*args, **kwargs)

    monkeypatch.setattr(mqkit.app, "send_dead_letter", refuse_once)
    app = mqkit.App("memory://app-dlq-refused")
    calls: list[object] = []
    app.handler("orders", group="billing")(lambda message: calls.append(message.value))
    dlq = app.broker.consumer(dead_letter_topic("billing"), group="ops", serializer="bytes")
    thread = _run_in_thread(app)
    with app.broker.producer(serializer="bytes") as producer:
        producer.send("orders", b"\x00 not json", content_type="application/json")
        producer.send("orders", b'{"ok": 1}', content_type="application/json")
    dead = dlq.receive(timeout=10)
    deadline = time.monotonic() + 10
    while calls == [] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.alive
    app.stop()
    thread.join()
    assert dead is not None and dead.value == b"\x00 not json"
    assert calls == [{"ok": 1}]
    stats = app.stats("billing")
    assert (stats.failed, stats.dead_lettered, stats.processed) == (1, 1, 1)
    app.close()


def test_undecodable_messages_go_to_the_dead_letter_topic() -> None:
    app = mqkit.App("memory://app2")
    calls: list[object] = []
    app.handler("orders", group="billing")(calls.append)
    dlq = app.broker.consumer(dead_letter_topic("billing"), group="ops", serializer="bytes")
    thread = _run_in_thread(app)
    with app.broker.producer(serializer="bytes") as producer:
        producer.send(
            "orders", b"\x00 not json", headers={"trace": "t1"}, content_type="application/json"
        )
    dead = dlq.receive(timeout=10)
    app.stop()
    thread.join()
    assert dead is not None and dead.value == b"\x00 not json"
    assert dead.headers["trace"] == "t1"
    assert dead.headers[TOPIC] == "orders"
    assert dead.headers[ERROR_TYPE] == "DecodeError"
    assert calls == []
    assert app.stats("billing").dead_lettered == 1
    app.close()


_SERVICE = """
import sys, time, mqkit
app = mqkit.App(sys.argv[1])

@app.handler("jobs", group="workers")
def handle(message):
    print("start", message.value, flush=True)
    time.sleep(1.0)
    print("done", message.value, flush=True)

app.run()
print("stopped", flush=True)
"""


def test_sigterm_finishes_in_flight_work_then_stops(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}?poll_interval=0.01"
    with mqkit.connect(url) as broker:
        broker.consumer("jobs", group="workers").close()  # the group exists
        with broker.producer() as producer:
            for i in range(5):
                producer.send("jobs", i)
    script = tmp_path / "service.py"
    script.write_text(_SERVICE)
    child = subprocess.Popen(
        [sys.executable, str(script), url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert child.stdout is not None
    assert child.stdout.readline().startswith("start 0")
    child.send_signal(signal.SIGTERM)
    rest = child.stdout.read().split("\n")
    assert child.wait(timeout=20) == 0
    assert rest[:2] == ["done 0", "stopped"], rest
    with mqkit.connect(url) as broker:
        consumer = broker.consumer("jobs", group="workers")
        left = []
        while (message := consumer.receive(timeout=1)) is not None:
            left.append(message.value)
            message.ack()
    assert sorted(left) == [1, 2, 3, 4]


def test_a_handler_result_is_the_reply_to_a_request() -> None:
    app = mqkit.App("memory://app-reply")

    @app.handler("prices", group="pricing")
    def price(message: mqkit.Message) -> dict[str, object]:
        return {"sku": message.value["sku"], "price": 12.5}

    @app.handler("audit", group="audit")
    def audit(message: mqkit.Message) -> str:
        return "ignored: nobody asked"

    thread = _run_in_thread(app)
    try:
        with app.broker.producer() as client:
            reply = client.request("prices", {"sku": "A-1"}, timeout=10)
            client.send("audit", {"x": 1})  # no reply_to: the result goes nowhere
    finally:
        app.stop()
        thread.join()
    assert reply.value == {"sku": "A-1", "price": 12.5}
    assert reply.content_type == "application/json"
    assert app.stats("pricing").processed == 1
    app.close()
