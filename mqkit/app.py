"""Handler style for applications: register functions per topic and group, then ``run()``.

Each handler gets ``concurrency`` worker threads, each a member of the group. A message is
acked when the handler returns and nacked when it raises (unless the handler settled it
itself). An undecodable message goes to the group's dead-letter topic instead of the handler.
``run()`` returns after SIGINT/SIGTERM (or ``stop()``) once in-flight messages are finished.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from mqkit.client import Broker, Producer, connect
from mqkit.deadletter import ensure_dead_letter_group, send_dead_letter
from mqkit.message import Message
from mqkit.serialization import Serializer

log = logging.getLogger(__name__)

Handler = Callable[[Message], Any]


@dataclass(frozen=True)
class Route:
    """Where a handler runs; middleware gets it to reach the broker and the app's producer.

    ``serializer`` is the one the route's consumers decode with. ``stopping`` is set when the
    app stops; a middleware that needs its own background work (e.g. a consumer of retry
    topics) starts it with :meth:`start_thread`, and ``App.run()`` joins it before returning.
    """

    topics: tuple[str, ...]
    group: str
    broker: Broker
    producer: Producer
    serializer: str | Serializer | None = None
    stopping: threading.Event = field(default_factory=threading.Event, compare=False)
    threads: list[threading.Thread] = field(default_factory=list, repr=False, compare=False)

    def start_thread(self, target: Callable[[], object], name: str) -> threading.Thread:
        """Run ``target`` beside the route's workers; it must return soon after ``stopping``."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread


Middleware = Callable[[Handler, Route], Handler]
"""``middleware(next_handler, route) -> handler``; the first one listed is the outermost."""


@dataclass
class RouteStats:
    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


@dataclass
class _Registration:
    handler: Handler
    topics: tuple[str, ...]
    group: str
    concurrency: int
    workers: int
    middleware: tuple[Middleware, ...]
    serializer: str | Serializer | None
    options: dict[str, Any]
    stats: RouteStats = field(default_factory=RouteStats)


class App:
    """Runs handlers until stopped. ``App(url)`` connects like :func:`mqkit.connect`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        broker: Broker | None = None,
        serializer: str | Serializer | None = None,
        **options: Any,
    ) -> None:
        self._own_broker = broker is None
        self.broker = (
            broker if broker is not None else connect(url, serializer=serializer, **options)
        )
        self._registrations: list[_Registration] = []
        self._stop = threading.Event()
        self._signals = 0

    def handler(
        self,
        topics: str | Sequence[str],
        *,
        group: str,
        concurrency: int = 1,
        workers: int = 1,
        middleware: Sequence[Middleware] = (),
        serializer: str | Serializer | None = None,
        **consumer_options: Any,
    ) -> Callable[[Handler], Handler]:
        """Decorator: run the function for every message of ``topics`` in ``group``.

        ``workers`` > 1 puts a per-key worker pool behind each consumer
        (:class:`mqkit.helpers.ordering.OrderedProcessor`): messages of one key run one at a
        time and in order, different keys run concurrently.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        names = (topics,) if isinstance(topics, str) else tuple(topics)

        def register(fn: Handler) -> Handler:
            self._registrations.append(
                _Registration(
                    fn,
                    names,
                    group,
                    concurrency,
                    workers,
                    tuple(middleware),
                    serializer,
                    consumer_options,
                )
            )
            return fn

        return register

    def stats(self, group: str) -> RouteStats:
        for reg in self._registrations:
            if reg.group == group:
                return reg.stats
        raise KeyError(group)

    def stop(self) -> None:
        """Ask ``run()`` to finish in-flight messages and return; safe from any thread."""
        self._stop.set()

    def run(
        self,
        *,
        install_signal_handlers: bool = True,
        duration: float | None = None,
        on_ready: Callable[[], object] | None = None,
    ) -> None:
        """Process messages until :meth:`stop`, SIGINT/SIGTERM or ``duration`` seconds.

        ``on_ready`` is called once every group is subscribed (e.g. to start producing).
        """
        if not self._registrations:
            raise RuntimeError("no handler registered; decorate a function with @app.handler")
        self._stop.clear()
        self._signals = 0
        restore = self._install_signals() if install_signal_handlers else {}
        dead_letters = self.broker.producer(serializer="bytes")
        workers: list[threading.Thread] = []
        routes: list[Route] = []
        try:
            for reg in self._registrations:
                # Dead letters are only kept for a group that exists before they are sent.
                ensure_dead_letter_group(self.broker, reg.group)
                route = Route(
                    reg.topics,
                    reg.group,
                    self.broker,
                    dead_letters,
                    serializer=reg.serializer,
                    stopping=self._stop,
                )
                routes.append(route)
                chain = reg.handler
                for mw in reversed(reg.middleware):
                    chain = mw(chain, route)
                for n in range(reg.concurrency):
                    consumer = self.broker.consumer(
                        reg.topics, group=reg.group, serializer=reg.serializer, **reg.options
                    )
                    worker = threading.Thread(
                        target=self._work,
                        args=(consumer, chain, route, reg.stats, reg.workers),
                        name=f"mqkit-{reg.group}-{n}",
                        daemon=True,
                    )
                    workers.append(worker)
            for worker in workers:
                worker.start()
            if on_ready is not None:
                on_ready()
            deadline = None if duration is None else time.monotonic() + duration
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._stop.wait(0.1)
        finally:
            self._stop.set()
            for worker in workers:
                worker.join()
            for route in routes:
                for thread in route.threads:
                    thread.join()
            dead_letters.close()
            for sig, previous in restore.items():
                signal.signal(sig, previous)

    def close(self) -> None:
        if self._own_broker:
            self.broker.close()

    def _work(
        self, consumer: Any, chain: Handler, route: Route, stats: RouteStats, workers: int
    ) -> None:
        with consumer:
            if workers > 1:
                from mqkit.helpers.ordering import OrderedProcessor

                OrderedProcessor(
                    consumer,
                    lambda message: self._dispatch(message, chain, route, stats),
                    workers=workers,
                    stop=self._stop,
                ).run()
                return
            while not self._stop.is_set():
                message = consumer.receive(timeout=0.2)
                if message is not None:
                    self._dispatch(message, chain, route, stats)

    def _dispatch(self, message: Message, chain: Handler, route: Route, stats: RouteStats) -> None:
        if message.error is not None:
            log.error("dead-lettering undecodable message %s: %s", message.id, message.error)
            send_dead_letter(route.producer, message, route.group, message.error)
            route.producer.flush()
            message.ack()
            stats.add("dead_lettered")
            return
        try:
            chain(message)
        except Exception:
            log.exception(
                "handler for %s in group %r failed on %r", message.topic, route.group, message
            )
            stats.add("failed")
            if message.settled is None:
                message.nack()
            return
        if message.settled is None:
            message.ack()
        stats.add("processed")

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals > 1:
                raise KeyboardInterrupt  # a second signal: stop waiting for in-flight work
            log.info("signal %d: finishing in-flight messages, then stopping", signum)
            self._stop.set()

        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, on_signal)
        return previous

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
