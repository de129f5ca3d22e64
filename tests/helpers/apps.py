"""Running an App beside a test."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import mqkit


@contextlib.contextmanager
def running(app: mqkit.App, timeout: float = 10.0) -> Iterator[mqkit.App]:
    """Run ``app`` in a thread; the block starts once it is subscribed. Stops and closes it."""
    ready = threading.Event()
    runner = threading.Thread(
        target=app.run, kwargs={"install_signal_handlers": False, "on_ready": ready.set}
    )
    runner.start()
    try:
        assert ready.wait(timeout), "app did not start"
        yield app
    finally:
        app.stop()
        runner.join(timeout)
        app.close()
    assert not runner.is_alive(), "app did not stop"
