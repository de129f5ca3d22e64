"""Handler style for applications: register functions per topic and group, then ``run()``.

Each handler gets ``concurrency`` worker threads, each a member of the group. A message is
acked when the handler returns and nacked when it raises (unless the handler settled it
itself). An undecodable message goes to the group's dead-letter topic instead of the handler.
``run()`` returns after SIGINT/SIGTERM (or ``stop()``) once in-flight messages are finished.

``workers`` > 1 puts an :class:`OrderedProcessor` behind each consumer: a per-key worker pool.
Middleware may define ``prepare(route)``; ``run()`` calls it for each route before any of the
route's consumers subscribes (e.g. to create the groups its helper topics need). All routes
subscribe at once, so an app is ready in the time one group join takes.

Request/reply: what a handler returns for a message with ``reply_to`` is sent there with the
request's correlation id before the message is acked (``Producer.request`` waits for it);
``None`` sends nothing.

The App is part of the core: it imports none of the helpers, which build on it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

from mqkit.client import Broker, Consumer, Producer, connect
from mqkit.deadletter import ensure_dead_letter_group, send_dead_letter
from mqkit.errors import MqkitError
from mqkit.message import Message
from mqkit.observe import RouteStats, dispatching, system_of, watch
from mqkit.serialization import Serializer

log = logging.getLogger(__name__)

T = TypeVar("T")

Handler = Callable[[Message], Any]


@dataclass(frozen=True)
class Route:
    """Where a handler runs; middleware gets it to reach the broker and the app's producer.

    ``serializer`` is the one the route's consumers decode with. ``stopping`` is set when the
    app stops; a middleware that needs its own background work (e.g. a consumer of retry
    topics) starts it with :meth:`start_thread`, and ``App.run()`` joins it before returning.
    ``replies`` sends what a handler returns for a message with ``reply_to`` (:meth:`reply`).
    ``stats`` is the route's :class:`RouteStats` (``App.stats``), which the helpers' relays
    count their deliveries in.
    """

    topics: tuple[str, ...]
    group: str
    broker: Broker
    producer: Producer
    serializer: str | Serializer | None = None
    stopping: threading.Event = field(default_factory=threading.Event, compare=False)
    threads: list[threading.Thread] = field(default_factory=list, repr=False, compare=False)
    replies: Producer | None = field(default=None, repr=False, compare=False)
    stats: RouteStats = field(default_factory=RouteStats, repr=False, compare=False)

    @property
    def system(self) -> str:
        """The backend as OpenTelemetry's ``messaging.system`` names it."""
        return system_of(self.broker.url.scheme)

    def reply(self, message: Message, result: object) -> None:
        """Send a handler's ``result`` to ``message.reply_to`` (request/reply), before the
        message is acked; nothing when the handler returned ``None`` or nobody asked."""
        if result is None or not message.reply_to or self.replies is None:
            return
        self.replies.reply(message, result)
        self.replies.flush()

    def start_thread(self, target: Callable[[], object], name: str) -> threading.Thread:
        """Run ``target`` beside the route's workers; it must return soon after ``stopping``."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread


Middleware = Callable[[Handler, Route], Handler]
"""``middleware(next_handler, route) -> handler``; the first one listed is the outermost.

A middleware object may also define ``prepare(route)``, which ``App.run`` calls before the
route's consumers subscribe and before the chain is built."""


def prepare_middleware(middleware: Sequence[Middleware], route: Route) -> None:
    """Call ``prepare(route)`` on each middleware that defines it, in the listed order."""
    for mw in middleware:
        prepare = getattr(mw, "prepare", None)
        if callable(prepare):
            prepare(route)


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
        self._background: list[tuple[Callable[[threading.Event], object], str]] = []
        self._stop = threading.Event()
        self._signals = 0
        self._ready = threading.Event()
        self._running = False
        self._workers: list[threading.Thread] = []

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
        (:class:`OrderedProcessor`): messages of one key run one at a
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

    def background(self, target: Callable[[threading.Event], object], name: str) -> None:
        """Run ``target(stopping)`` in a thread of its own while :meth:`run` runs (an outbox
        relay, say); it must return soon after ``stopping`` is set, and ``run()`` joins it
        before returning. An app with background work and no handler runs just that."""
        self._background.append((target, name))

    def stats(self, group: str) -> RouteStats:
        for reg in self._registrations:
            if reg.group == group:
                return reg.stats
        raise KeyError(group)

    def stop(self) -> None:
        """Ask ``run()`` to finish in-flight messages and return; safe from any thread."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """Readiness (a Kubernetes readiness probe): ``run()`` has subscribed every group and
        started its workers, and is not stopping."""
        return self._ready.is_set() and not self._stop.is_set()

    @property
    def alive(self) -> bool:
        """Liveness (a Kubernetes liveness probe): ``run()`` is running (or starting) and none
        of its worker threads has died (while stopping they end, and it stays True). False
        before ``run()`` and after it returned."""
        started = (worker for worker in self._workers if worker.ident is not None)
        return self._running and (self._stop.is_set() or all(w.is_alive() for w in started))

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
        if not self._registrations and not self._background:
            raise RuntimeError("no handler registered; decorate a function with @app.handler")
        self._stop.clear()
        self._signals = 0
        restore = self._install_signals() if install_signal_handlers else {}
        self._running = True
        self._workers = workers = []
        unwatch: list[Callable[[], None]] = []
        routes: list[Route] = []
        replies: dict[int, Producer] = {}
        try:
            dead_letters = self.broker.producer(serializer="bytes")
        except BaseException:
            self._running = False
            raise
        try:
            for reg in self._registrations:
                key = id(reg.serializer)
                if key not in replies:
                    replies[key] = self.broker.producer(serializer=reg.serializer)
                routes.append(
                    Route(
                        reg.topics,
                        reg.group,
                        self.broker,
                        dead_letters,
                        serializer=reg.serializer,
                        stopping=self._stop,
                        replies=replies[key],
                        stats=reg.stats,
                    )
                )
            members = self._subscribe_all(routes) if routes else []
            for route in routes:
                unwatch.append(
                    watch(
                        route.system,
                        route.group,
                        route.topics,
                        functools.partial(self.broker.depth, route.group, route.topics),
                    )
                )
            for reg, route, consumers in zip(self._registrations, routes, members, strict=True):
                chain = reg.handler
                for mw in reversed(reg.middleware):
                    chain = mw(chain, route)
                for n, consumer in enumerate(consumers):
                    worker = threading.Thread(
                        target=self._work,
                        args=(consumer, chain, route, reg.stats, reg.workers),
                        name=f"mqkit-{reg.group}-{n}",
                        daemon=True,
                    )
                    workers.append(worker)
            for target, name in self._background:
                workers.append(
                    threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
                )
            for worker in workers:
                worker.start()
            self._ready.set()
            if on_ready is not None:
                on_ready()
            deadline = None if duration is None else time.monotonic() + duration
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._stop.wait(0.1)
        finally:
            self._stop.set()
            self._ready.clear()
            for forget in unwatch:
                forget()
            for worker in workers:
                worker.join()
            for route in routes:
                for thread in route.threads:
                    thread.join()
            dead_letters.close()
            for producer in replies.values():
                producer.close()
            for sig, previous in restore.items():
                signal.signal(sig, previous)
            self._running = False

    def _subscribe_all(self, routes: list[Route]) -> list[list[Consumer]]:
        """Every route's consumers, all groups joining at once (a group join takes seconds on
        some brokers: an app starts in the time of one, not of all). Per route, first its
        dead-letter group (dead letters are kept only for a group that exists before they are
        sent) and its middleware's ``prepare``; on any failure every consumer made is closed."""
        made: list[Consumer] = []
        lock = threading.Lock()

        def subscribe(reg: _Registration, route: Route) -> list[Consumer]:
            ensure_dead_letter_group(self.broker, reg.group)
            prepare_middleware(reg.middleware, route)

            def member() -> Consumer:
                consumer = self.broker.consumer(
                    reg.topics, group=reg.group, serializer=reg.serializer, **reg.options
                )
                with lock:
                    made.append(consumer)
                return consumer

            return _all_at_once([member] * reg.concurrency)

        try:
            return _all_at_once(
                [
                    functools.partial(subscribe, reg, route)
                    for reg, route in zip(self._registrations, routes, strict=True)
                ]
            )
        except BaseException:
            for consumer in made:
                with contextlib.suppress(MqkitError):
                    consumer.close()
            raise

    def close(self) -> None:
        if self._own_broker:
            self.broker.close()

    def _work(
        self, consumer: Any, chain: Handler, route: Route, stats: RouteStats, workers: int
    ) -> None:
        with consumer:
            if workers > 1:
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
        outcome = dispatching(route.system, route.group, stats, message)
        try:
            if message.error is not None:
                log.error("dead-lettering undecodable message %s: %s", message.id, message.error)
                outcome.decided = True  # never ran: neither processed nor failed
                try:
                    send_dead_letter(route.producer, message, route.group, message.error)
                    route.producer.flush()
                except Exception as exc:  # the broker refused: keep it, and keep consuming
                    log.exception("could not dead-letter %s; giving it back", message.id)
                    outcome.decided = False  # it is a failure after all: counted as one
                    outcome.add("failed", exc)
                    message.nack()
                    return
                message.ack()
                outcome.add("dead_lettered", message.error)
                return
            try:
                result = chain(message)
                if message.settled is None:
                    route.reply(message, result)
            except Exception as exc:
                log.exception(
                    "handler for %s in group %r failed on %r", message.topic, route.group, message
                )
                outcome.add("failed", exc)
                if message.settled is None:
                    message.nack()
                return
            if message.settled is None:
                message.ack()
        finally:
            outcome.finish()

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


# -- the per-key worker pool behind ``workers=N`` ----------------------------------------

KeyFunction = Callable[[Message], str | None]


def _all_at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """The results of ``calls`` run concurrently, in order; the first error is raised once
    all have finished."""
    if len(calls) == 1:
        return [calls[0]()]
    with concurrent.futures.ThreadPoolExecutor(len(calls), "mqkit-subscribe") as pool:
        futures = [pool.submit(call) for call in calls]
    return [future.result() for future in futures]


def message_key(message: Message) -> str | None:
    return message.key


@dataclass
class OrderedStats:
    """What an :class:`OrderedProcessor` did; read it after (or during) :meth:`run`."""

    received: int = 0
    processed: int = 0
    failed: int = 0
    #: Messages given back because a message of the same key ahead of them was nacked.
    requeued_behind_nack: int = 0
    #: Handler calls per worker thread.
    per_worker: list[int] = field(default_factory=list)
    #: Most handlers running at once.
    max_busy: int = 0
    #: Most messages received and not yet settled at once.
    max_in_flight: int = 0


class OrderedProcessor:
    """Run ``handler`` for the messages of ``consumer`` on a per-key worker pool.

    * messages of one key are handled one at a time, in the order they were received;
    * messages of different keys (and messages without a key) run concurrently;
    * a message is acked when its handler returns and nacked when it raises (unless the handler
      settled it itself), so delivery stays at-least-once;
    * when a message is nacked (by the processor or by the handler, e.g. a retry with a delay),
      the messages of the same key that were already received behind it are nacked too, in
      order, so that a broker with ``features.key_order_on_nack`` hands them out again after it;
    * at most ``max_in_flight`` messages are received but not yet settled: memory stays bounded
      and a slow key slows reception instead of filling the process.

    Acks of different keys happen in completion order, not reception order; every mqkit backend
    acks messages individually (the conformance suite checks it).

    ``key`` picks the ordering key (the message key by default; ``None`` means unordered).
    :meth:`run` blocks until :meth:`stop` (or the ``stop`` event) or ``duration`` seconds, then
    waits for running handlers and returns; messages received but not started are left
    unsettled, so closing the consumer gives them back to the group in order.
    """

    def __init__(
        self,
        consumer: Consumer,
        handler: Callable[[Message], Any],
        *,
        workers: int = 8,
        max_in_flight: int | None = None,
        key: KeyFunction = message_key,
        stop: threading.Event | None = None,
        receive_timeout: float = 0.2,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.consumer = consumer
        self.handler = handler
        self.workers = workers
        self.max_in_flight = max_in_flight if max_in_flight is not None else max(64, 32 * workers)
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._key = key
        self._stop = stop if stop is not None else threading.Event()
        self._receive_timeout = receive_timeout
        self._cv = threading.Condition()
        # key -> messages received and not started; a key is in _ready when it has messages
        # and none of its messages is running.
        self._queues: dict[object, deque[Message]] = {}
        self._ready: deque[object] = deque()
        self._in_flight = 0
        self._busy = 0
        self._receiving = False
        # Keys nacked while the receiver was inside receive(): what that call returns for such a
        # key may have been handed out before the nack, ahead of the nacked message.
        self._nacked_during_receive: set[object] = set()
        self._unkeyed = itertools.count()
        self.stats = OrderedStats(per_worker=[0] * workers)

    # -- public ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def run(self, duration: float | None = None) -> OrderedStats:
        threads = [
            threading.Thread(target=self._work, args=(n,), name=f"mqkit-ordered-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for thread in threads:
            thread.start()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            self._receive_loop(deadline)
        finally:
            with self._cv:
                self._stop.set()
                # Not started: left unsettled, the consumer's close gives them back in order.
                dropped = sum(len(q) for q in self._queues.values())
                self._in_flight -= dropped
                self._queues.clear()
                self._ready.clear()
                self._cv.notify_all()
            for thread in threads:
                thread.join()
        return self.stats

    # -- receiving -------------------------------------------------------------------------

    def _receive_loop(self, deadline: float | None) -> None:
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            with self._cv:
                while self._in_flight >= self.max_in_flight and not self._stop.is_set():
                    self._cv.wait(0.1)
                if self._stop.is_set():
                    return
                self._nacked_during_receive.clear()
                self._receiving = True
            try:
                message = self.consumer.receive(timeout=self._receive_timeout)
            except Exception:
                with self._cv:
                    self._receiving = False
                if self.consumer.closed:
                    return
                raise
            if message is None:
                with self._cv:
                    self._receiving = False
                continue
            k = self._key(message)
            slot: object = k if k is not None else ("unkeyed", next(self._unkeyed))
            with self._cv:
                # Same critical section as the check: a nack after this point happened after
                # the message was received, and puts it back itself if it is queued.
                self._receiving = False
                self.stats.received += 1
                if k is not None and slot in self._nacked_during_receive:
                    self._give_back(message)
                    self.stats.requeued_behind_nack += 1
                    continue
                queue = self._queues.get(slot)
                if queue is None:
                    queue = self._queues[slot] = deque()
                    self._ready.append(slot)
                    self._cv.notify()
                queue.append(message)
                self._in_flight += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)

    # -- working ---------------------------------------------------------------------------

    def _work(self, n: int) -> None:
        while True:
            with self._cv:
                while not self._ready and not self._stop.is_set():
                    self._cv.wait()
                if not self._ready:
                    return
                slot = self._ready.popleft()
                message = self._queues[slot].popleft()
                self._busy += 1
                self.stats.max_busy = max(self.stats.max_busy, self._busy)
            ok = self._handle(message)
            with self._cv:
                self._busy -= 1
                self._in_flight -= 1
                self.stats.per_worker[n] += 1
                if ok:
                    self.stats.processed += 1
                else:
                    self.stats.failed += 1
                queue = self._queues.get(slot)
                if message.settled == "nack" and queue is not None:
                    # Everything of this key behind it goes back too, in order.
                    while queue:
                        self._give_back(queue.popleft())
                        self._in_flight -= 1
                        self.stats.requeued_behind_nack += 1
                    if self._receiving:
                        self._nacked_during_receive.add(slot)
                if queue is not None:
                    if queue:
                        self._ready.append(slot)
                    else:
                        del self._queues[slot]
                self._cv.notify_all()

    def _handle(self, message: Message) -> bool:
        try:
            self.handler(message)
        except Exception:
            log.exception("handler failed on %r", message)
            if message.settled is None:
                self._settle(message, ack=False)
            return False
        if message.settled is None:
            self._settle(message, ack=True)
        return True

    def _settle(self, message: Message, *, ack: bool) -> None:
        try:
            if ack:
                message.ack()
            else:
                message.nack()
        except Exception as exc:  # consumer closed: the message goes back to the group anyway
            log.warning("could not settle %r: %s", message, exc)

    def _give_back(self, message: Message) -> None:
        try:
            message.nack()
        except Exception as exc:
            log.warning("could not give back %r: %s", message, exc)
