"""Health: ``Broker.ping`` (sync and async) on every configured backend, ``mqkit ping`` exiting
0 on a running backend and 1 within its timeout on a closed or silent port, and the App's
readiness and liveness."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqkit
from mqkit import aio
from mqkit.errors import BrokerUnavailable
from tests.helpers.apps import running

#: Every scheme whose client talks TCP, with what ``mqkit ping`` needs to run on its own.
NETWORK = ["amqp://guest:guest@127.0.0.1:{port}/", "stomp://127.0.0.1:{port}",
           "kafka://127.0.0.1:{port}", "rocketmq://127.0.0.1:{port}"]  # fmt: skip


def _mqkit(*args: str, timeout: float = 60.0) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mqkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def _silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung broker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_ping_answers_on_every_backend(url: str) -> None:
    with mqkit.connect(url) as broker:
        assert broker.ping(timeout=10) >= 0.0

    async def main() -> float:
        async with aio.connect(url) as broker:
            return await broker.ping(timeout=10)

    assert asyncio.run(main()) >= 0.0


def test_mqkit_ping_exits_0_on_a_running_backend(url: str) -> None:
    code, out, _ = _mqkit("ping", url, "--timeout", "20")
    assert code == 0, out
    assert " ok (" in out and out.count("\n") == 1


@pytest.mark.parametrize("template", NETWORK, ids=lambda t: t.split(":")[0])
def test_mqkit_ping_exits_1_on_a_closed_port(template: str) -> None:
    code, out, took = _mqkit("ping", template.format(port=_closed_port()))
    assert code == 1, out
    assert "is not usable" in out
    assert took < 10.0, f"took {took:.1f} s"  # the default timeout is 5 s


@pytest.mark.parametrize("template", NETWORK[:3], ids=lambda t: t.split(":")[0])
def test_mqkit_ping_gives_up_on_a_silent_port_in_time(template: str) -> None:
    with _silent_port() as port:
        code, out, took = _mqkit("ping", template.format(port=port), "--timeout", "2")
    assert code == 1, out
    assert took < 10.0, f"took {took:.1f} s"


def test_broker_ping_is_bounded_and_raises_broker_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with mqkit.connect(f"sqlite:///{db}") as broker:
        assert broker.ping() >= 0.0
        with pytest.raises(ValueError):
            broker.ping(timeout=0)
        # The file is locked by another writer: the ping answers within its timeout anyway.
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                broker.ping(timeout=0.5)
            assert time.monotonic() - started < 5.0
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert broker.ping() >= 0.0


def _state(app: mqkit.App | aio.App) -> tuple[bool, bool]:
    return app.ready, app.alive


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_app_ready_and_alive() -> None:
    app = mqkit.App(f"memory://{uuid.uuid4().hex}")
    app.handler("jobs", group="g", concurrency=2)(lambda message: None)
    assert _state(app) == (False, False)
    with running(app):
        assert _state(app) == (True, True)
        # The consumers' connection goes away under the workers: they die, liveness says so.
        for consumer in list(app.broker._children):
            if isinstance(consumer, mqkit.Consumer):
                consumer.close()
        deadline = time.monotonic() + 10
        while app.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _state(app) == (True, False)
    assert _state(app) == (False, False)


def test_async_app_ready_and_alive() -> None:
    app = aio.App(f"memory://{uuid.uuid4().hex}")
    seen: list[tuple[bool, bool]] = []

    @app.handler("jobs", group="g")
    async def handle(message: aio.AsyncMessage) -> None:
        pass

    async def ready() -> None:
        seen.append(_state(app))
        app.stop()
        seen.append(_state(app))

    assert _state(app) == (False, False)
    asyncio.run(asyncio.wait_for(app.run(on_ready=ready, install_signal_handlers=False), 30))
    assert seen == [(True, True), (False, True)]
    assert _state(app) == (False, False)
