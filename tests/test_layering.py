"""The core does not depend on the helpers, and the App's hook for middleware set-up."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

import mqkit
from mqkit.app import Handler, Route
from tests.helpers.apps import running


def test_core_imports_no_helper() -> None:
    """``mqkit`` and ``mqkit.app`` (connect/send/receive/App) load without ``mqkit.helpers``."""
    code = (
        "import mqkit, mqkit.app; import sys; "
        "loaded = sorted(m for m in sys.modules if m.startswith('mqkit.helpers')); "
        "assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_core_imports_no_opentelemetry() -> None:
    """Tracing is an extra: sending and running an App load no OpenTelemetry module until
    ``mqkit.telemetry`` is imported."""
    code = (
        "import mqkit, mqkit.app, mqkit.aio, sys; "
        "app = mqkit.App('memory://layering'); "
        "app.handler('t', group='g')(lambda m: app.stop()); "
        "app.run(install_signal_handlers=False, "
        "on_ready=lambda: app.broker.producer().send('t', 1)); "
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry')); "
        "assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


class Recording:
    """A middleware with a ``prepare`` hook; records what App.run did, in order."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def prepare(self, route: Route) -> None:
        self.log.append(f"prepare {route.group} {route.topics}")
        # A group subscribed here exists before the route's consumers start.
        route.broker.consumer("side", group=f"{route.group}.side").close()

    def __call__(self, handler: Handler, route: Route) -> Handler:
        self.log.append("wrap")

        def run(message: mqkit.Message) -> object:
            self.log.append(f"handle {message.value}")
            return handler(message)

        return run


def test_app_run_calls_prepare_before_wrapping_and_consuming() -> None:
    log: list[str] = []
    app = mqkit.App(f"memory://{uuid.uuid4().hex}")
    got = threading.Event()
    app.handler("jobs", group="g", middleware=[Recording(log), lambda h, r: h])(
        lambda message: got.set()
    )
    with running(app):
        with app.broker.producer() as producer:
            producer.send("jobs", 7)
            producer.send("side", "kept")
        assert got.wait(10)
        side = app.broker.consumer("side", group="g.side")
        kept = side.receive(timeout=5)
        assert kept is not None and kept.value == "kept", "prepare ran before the send"
        side.close()
    assert log == ["prepare g ('jobs',)", "wrap", "handle 7"]
