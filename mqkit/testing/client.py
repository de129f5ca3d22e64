"""Run an App's handlers against ``memory://`` inside a test, and see what they did.

    with TestClient(app) as client:                    # a mqkit.App or a mqkit.aio.App
        client.publish("orders", {"id": 1}, key="c-7")
        [message] = client.received("billing")         # what the group's handlers were given
        assert client.published("invoices")[0].value == {"order": 1}

The client moves the app onto a fresh in-memory queue of its own for the ``with`` block (and
back after it), runs it in a background thread until every group is subscribed, and stops it
on exit (raising what made it fail, if anything did). :meth:`TestClient.received` and
:meth:`TestClient.published` first wait until the app is idle: nothing left for its groups,
nothing in flight and nothing sent for a moment. Handlers must publish through the app's
broker (``app.broker``) or a ``memory://`` connection of the same name (:attr:`TestClient.url`):
a connection made before the client started still points elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import mqkit
from mqkit.app import App
from mqkit.backends.sqlite import Store, release_store, shared_store, unpack_delivery
from mqkit.client import Broker, Producer
from mqkit.deadletter import replay_topic
from mqkit.errors import DecodeError, MqkitError
from mqkit.message import Message
from mqkit.serialization import (
    Serializer,
    decode_content,
    for_content_type,
    get_serializer,
)

#: Quiet time after the last write before the app counts as idle (a handler's producer
#: commits within milliseconds of ``send``).
SETTLE = 0.05

_LOG_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS testclient_sent (seq INTEGER PRIMARY KEY);
CREATE TEMP TRIGGER IF NOT EXISTS testclient_log AFTER INSERT ON main.messages BEGIN
    INSERT INTO testclient_sent (seq) VALUES (NEW.seq);
END;
"""


class TestClient:
    """Runs ``app`` (a :class:`mqkit.App` or :class:`mqkit.aio.App`) on ``memory://`` for a
    ``with`` block; ``publish`` to it, then assert on ``received`` and ``published``."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, app: Any, *, serializer: str | Serializer | None = None) -> None:
        self.app = app
        self.url = f"memory://mqkit-testclient-{uuid.uuid4().hex[:12]}"
        self._serializer = serializer
        self._decoder = get_serializer(serializer)
        self._received: dict[str, list[Message]] = defaultdict(list)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._store: Store | None = None
        self._broker: Broker | None = None
        self._producer: Producer | None = None
        self._raw: Producer | None = None
        self._undo: list[Callable[[], None]] = []
        self._stop: Callable[[], None] = lambda: None

    # -- the with block ------------------------------------------------------------------

    def __enter__(self) -> TestClient:
        name = self.url.removeprefix("memory://")
        # Held for the whole block, so the queue outlives the app's own connections.
        self._store = shared_store(
            "memory:" + name, name, memory=True, busy_timeout=5.0, synchronous="normal"
        )
        with self._store.lock:
            self._store.conn.executescript(_LOG_TABLE)
        try:
            self._broker = mqkit.connect(self.url, serializer=self._serializer)
            self._producer = self._broker.producer()
            self._start()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        if self._error is not None and exc[0] is None:
            raise MqkitError(f"the app failed: {self._error!r}") from self._error

    # -- what a test calls ---------------------------------------------------------------

    def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """Send a message to the app (``send()``'s arguments; bytes go as they are) and return
        its id once it is in the queue."""
        if self._producer is None:
            raise RuntimeError("publish() inside `with TestClient(app) as client:` only")
        producer = self._producer
        if isinstance(value, bytes | bytearray | memoryview):
            if self._raw is None:
                self._raw = self._require_broker().producer(serializer="bytes")
            producer = self._raw
        message_id = producer.send(topic, value, key=key, headers=headers, **fields)
        producer.flush(5.0)
        return message_id

    def received(self, group: str, *, timeout: float = 5.0) -> list[Message]:
        """Every message the handlers of ``group`` were given (redeliveries too), in order,
        once the app is idle."""
        if group not in self._groups():
            raise KeyError(f"no handler of group {group!r}; groups: {sorted(self._groups())}")
        self.wait(timeout)
        with self._lock:
            return list(self._received[group])

    def published(self, topic: str, *, timeout: float = 5.0) -> list[Message]:
        """Every message sent to ``topic`` since the client started (by the test, the
        handlers or the App: replies, dead letters), decoded, once the app is idle. They are
        records: ``ack()``/``nack()`` raise."""
        self.wait(timeout)
        store = self._require_store()
        with store.lock:
            rows = store.conn.execute(
                "SELECT m.id, m.key, m.headers, m.body, m.ts, m.topic FROM messages m "
                "JOIN testclient_sent s ON s.seq = m.seq WHERE m.topic = ? ORDER BY m.seq",
                (topic,),
            ).fetchall()
        return [self._record(row) for row in rows]

    def wait(self, timeout: float = 5.0) -> None:
        """Return once the app is idle: no message left for its groups (none queued, leased
        or waiting for a delayed redelivery, nor a retry copy) and nothing written for
        :data:`SETTLE` s."""
        store = self._require_store()
        # A group's retry copies and replays wait in its retry group (mqkit.helpers.retry).
        groups = sorted({*self._groups(), *(replay_topic(g) for g in self._groups())})
        marks = ",".join("?" * len(groups))
        deadline = time.monotonic() + timeout
        quiet_since, seen = time.monotonic(), -1
        while True:
            self._raise_if_failed()
            with store.lock:
                pending = store.conn.execute(
                    f"SELECT count(*) FROM queue WHERE grp IN ({marks})", groups
                ).fetchone()[0]
                version = store.version
            now = time.monotonic()
            if pending or version != seen:
                quiet_since, seen = now, version
            elif now - quiet_since >= SETTLE:
                return
            if now >= deadline:
                raise TimeoutError(
                    f"the app is still busy after {timeout} s: {pending} message(s) left for "
                    f"groups {groups} (a handler that always fails gets its message again)"
                )
            time.sleep(0.01)

    # -- running the app -----------------------------------------------------------------

    def _groups(self) -> set[str]:
        if isinstance(self.app, App):
            return {reg.group for reg in self.app._registrations}
        return {route.group for route in self.app._routes}

    def _record_into(self, group: str, message: Message) -> None:
        with self._lock:
            self._received[group].append(message)

    def _start(self) -> None:
        ready = threading.Event()
        if isinstance(self.app, App):
            app = self.app
            previous = app.broker
            app.broker = self._connect_app()
            self._undo.append(lambda: setattr(app, "broker", previous))
            for reg in app._registrations:
                original = reg.handler

                def recording(message: Message, _fn: Any = original, _g: str = reg.group) -> Any:
                    self._record_into(_g, message)
                    return _fn(message)

                reg.handler = recording
                self._undo.append(functools.partial(setattr, reg, "handler", original))

            def run() -> None:
                app.run(install_signal_handlers=False, on_ready=ready.set)

            self._stop = app.stop
        else:
            self._start_async()
            run = self._run_async(ready)
        self._thread = threading.Thread(target=self._guard(run, ready), name="mqkit-testclient")
        self._thread.start()
        while not ready.wait(0.05):
            if not self._thread.is_alive():
                break
        self._raise_if_failed()

    def _connect_app(self) -> Broker:
        broker = mqkit.connect(self.url, serializer=self._serializer)
        self._undo.append(broker.close)
        return broker

    def _start_async(self) -> None:
        app = self.app
        previous = app.broker
        self._undo.append(lambda: setattr(app, "broker", previous))
        for route in app._routes:
            original = route.handler

            async def recording(message: Any, _fn: Any = original, _g: str = route.group) -> Any:
                self._record_into(_g, message.sync)
                return await _fn(message)

            route.handler = recording
            self._undo.append(functools.partial(setattr, route, "handler", original))

    def _run_async(self, ready: threading.Event) -> Callable[[], None]:
        from mqkit import aio  # the asyncio API only when an async app is tested

        app = self.app
        started = threading.Event()
        loop_box: list[asyncio.AbstractEventLoop] = []

        async def main() -> None:
            loop_box.append(asyncio.get_running_loop())
            started.set()
            async with aio.connect(self.url, serializer=self._serializer) as broker:
                app.broker = broker
                await app.run(install_signal_handlers=False, on_ready=ready.set)

        def stop() -> None:
            if loop_box:
                with contextlib.suppress(RuntimeError):  # the loop ended already
                    loop_box[0].call_soon_threadsafe(app.stop)

        self._stop = stop
        return lambda: asyncio.run(main())

    def _guard(self, run: Callable[[], None], ready: threading.Event) -> Callable[[], None]:
        def guarded() -> None:
            try:
                run()
            except BaseException as exc:
                self._error = exc
            finally:
                ready.set()

        return guarded

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise MqkitError(f"the app failed: {error!r}") from error
        if self._thread is not None and not self._thread.is_alive():
            raise MqkitError("the app stopped on its own")

    def _close(self) -> None:
        if self._thread is not None:
            self._stop()
            self._thread.join()
            self._thread = None
        for undo in reversed(self._undo):
            with contextlib.suppress(MqkitError):
                undo()
        self._undo.clear()
        for closeable in (self._producer, self._raw, self._broker):
            if closeable is not None:
                with contextlib.suppress(MqkitError):
                    closeable.close()
        self._producer = self._raw = self._broker = None
        if self._store is not None:
            name = self.url.removeprefix("memory://")
            release_store("memory:" + name, self._store, keep=False)
            self._store = None

    def _require_broker(self) -> Broker:
        if self._broker is None:
            raise RuntimeError("only inside `with TestClient(app) as client:`")
        return self._broker

    def _require_store(self) -> Store:
        if self._store is None:
            raise RuntimeError("only inside `with TestClient(app) as client:`")
        return self._store

    def _record(self, row: tuple[Any, ...]) -> Message:
        message_id, key, headers, body, ts, topic = row
        delivery = unpack_delivery(
            headers, topic=topic, id=message_id, key=key, body=bytes(body), timestamp=ts, attempt=0
        )
        value: Any = None
        error: DecodeError | None = None
        try:
            decoder = for_content_type(self._decoder, delivery.content_type)
            value = decoder.loads(decode_content(delivery.body, delivery.content_encoding))
        except Exception as exc:
            error = DecodeError(f"message {message_id} on {topic!r} could not be decoded: {exc}")
        return Message(delivery, value, error, _not_settled)


def _not_settled(message: Message, ack: bool, requeue: bool, delay: float) -> None:
    raise MqkitError(f"{message!r} is a record of what was published; it cannot be settled")


__all__ = ["SETTLE", "TestClient"]
