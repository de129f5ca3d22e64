"""``async def`` handlers: the asyncio counterpart of :class:`mqkit.App`.

Per route, one consumer and one dispatching task: it receives while fewer than ``concurrency``
messages are in flight and runs each message's handler in a task of its key. Messages of one
key run one at a time, in the order received; different keys (and messages without a key) run
concurrently. A message is acked when its handler returns and nacked when it raises (unless the
handler settled it); the messages of the same key received behind a nacked one are nacked too,
in order, so the broker hands them out again after it. An undecodable message (or one that
does not fit the route's ``model``) goes to the group's dead-letter topic at once, never to the
handler. What a handler returns for a message with ``reply_to`` is sent there (request/reply).

``run()`` returns after :meth:`App.stop`, SIGINT/SIGTERM or ``duration``: it stops receiving,
lets running handlers finish, and closes the consumers, which gives back what was received and
not started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, get_type_hints

from mqkit.aio._bridge import AsyncBroker, AsyncConsumer, AsyncMessage, AsyncProducer, connect
from mqkit.app import Route, prepare_middleware
from mqkit.client import Producer
from mqkit.deadletter import ensure_dead_letter_group, send_dead_letter
from mqkit.errors import ConfigError, MessageStateError
from mqkit.message import Message
from mqkit.observe import RouteStats, dispatching, system_of, watch
from mqkit.serialization import Serializer
from mqkit.typing_payloads import check_model

log = logging.getLogger("mqkit.aio.app")

AsyncHandler = Callable[[AsyncMessage], Awaitable[Any]]
#: A handler as decorated: of a message, or of a model (its first parameter's annotation).
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


class AsyncMiddleware(Protocol):
    """Middleware of :class:`App`: the sync helpers (``retry``, ``idempotent``) implement
    ``wrap_async``; ``prepare(route.sync)``, if defined, runs in a thread before the route's
    consumer subscribes."""

    def wrap_async(self, handler: AsyncHandler, route: AsyncRoute) -> AsyncHandler: ...


@dataclass(frozen=True)
class AsyncRoute:
    """Where an async handler runs, for its middleware. ``sync`` is the same route for the
    sync parts of the helpers (:class:`mqkit.Route`: the sync broker, the dead-letter
    producer, the ``stopping`` event and threads, e.g. retry relays, that run() joins)."""

    topics: tuple[str, ...]
    group: str
    broker: AsyncBroker
    sync: Route
    loop: asyncio.AbstractEventLoop


class SettledInThread(AsyncMessage):
    """An :class:`AsyncMessage` over a message that middleware hands on: a retry copy seen
    as the original (:func:`mqkit.helpers.original_view`). Settling it settles ``outer`` (the
    message as received) or, without one, the sync message in a thread."""

    __slots__ = ("_outer",)

    def __init__(self, message: Message, outer: AsyncMessage | None = None) -> None:
        super().__init__(message, None)
        self._outer = outer

    async def ack(self) -> None:
        if self._outer is not None:
            await self._outer.ack()
        else:
            self._mark("ack")
            await asyncio.to_thread(self.sync.ack)

    async def nack(self, requeue: bool = True, *, delay: float = 0.0) -> None:
        if self._outer is not None:
            await self._outer.nack(requeue, delay=delay)
        else:
            if delay < 0:
                raise ValueError("delay must be >= 0")
            self._mark("nack")
            await asyncio.to_thread(self.sync.nack, requeue, delay=delay)

    def _mark(self, outcome: str) -> None:
        if self.settled is not None:
            raise MessageStateError(f"message {self.id} was already {self.settled}ed")
        self._settled = outcome

    @property
    def settled(self) -> str | None:
        if self._outer is not None:
            return self._outer.settled
        return self._settled or self.sync.settled


@dataclass
class _Route:
    handler: AsyncHandler
    topics: tuple[str, ...]
    group: str
    concurrency: int
    serializer: str | Serializer | None
    model: type[Any] | None
    options: dict[str, Any]
    middleware: tuple[AsyncMiddleware, ...] = ()
    stats: RouteStats = field(default_factory=RouteStats)


def _is_async(fn: object) -> bool:
    return asyncio.iscoroutinefunction(fn)


def _typed_handler(fn: Callable[..., Awaitable[Any]]) -> tuple[AsyncHandler, type[Any] | None]:
    """A handler whose first parameter is annotated with a dataclass or pydantic model
    (``async def bill(order: Order)``) gets the validated value; others get the message."""
    try:
        first = next(iter(inspect.signature(fn).parameters.values()), None)
        hint = get_type_hints(fn).get(first.name) if first is not None else None
    except (NameError, TypeError, ValueError):  # unresolvable annotations: a plain handler
        hint = None
    if hint is None or not isinstance(hint, type) or issubclass(hint, AsyncMessage):
        return fn, None
    try:
        model = check_model(hint)
    except ConfigError:
        return fn, None

    async def call(message: AsyncMessage) -> Any:
        return await fn(message.value)

    return call, model


class App:
    """Runs ``async def`` handlers until stopped. ``App(url)`` connects like
    :func:`mqkit.aio.connect` when :meth:`run` starts; ``App(broker=…)`` uses yours."""

    def __init__(
        self,
        url: str | None = None,
        *,
        broker: AsyncBroker | None = None,
        serializer: str | Serializer | None = None,
        **options: Any,
    ) -> None:
        self.broker = broker
        self._connect = (url, serializer, options)
        self._routes: list[_Route] = []
        self._background: list[tuple[Callable[[threading.Event], object], str]] = []
        self._stop: asyncio.Event | None = None
        self._stop_asked = False
        self._ready = False
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []

    def handler(
        self,
        topics: str | Sequence[str],
        *,
        group: str,
        concurrency: int = 16,
        serializer: str | Serializer | None = None,
        model: type[Any] | None = None,
        middleware: Sequence[AsyncMiddleware] = (),
        **consumer_options: Any,
    ) -> Callable[[H], H]:
        """Decorator: await ``fn(message)`` for every message of ``topics`` in ``group``, at
        most ``concurrency`` at once, one at a time per key. ``model`` validates values; a
        handler whose first parameter is annotated with a dataclass or pydantic model
        (``async def bill(order: Order)``) is called with the validated value instead.
        ``middleware``: ``mqkit.helpers.retry(...)``, ``idempotent(...)`` (retry first)."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        for mw in middleware:
            if not hasattr(mw, "wrap_async"):
                raise TypeError(f"{mw!r} is not middleware for async handlers (no wrap_async)")
        names = (topics,) if isinstance(topics, str) else tuple(topics)

        def register(fn: H) -> H:
            if not _is_async(fn):
                raise TypeError(f"{fn!r} is not an async def function; mqkit.App runs sync ones")
            call, typed = _typed_handler(fn)
            self._routes.append(
                _Route(
                    call,
                    names,
                    group,
                    concurrency,
                    serializer,
                    model or typed,
                    dict(consumer_options),
                    tuple(middleware),
                )
            )
            return fn

        return register

    def stats(self, group: str) -> RouteStats:
        for route in self._routes:
            if route.group == group:
                return route.stats
        raise KeyError(group)

    def background(self, target: Callable[[threading.Event], object], name: str) -> None:
        """Run ``target(stopping)`` in a thread of its own while :meth:`run` runs (an outbox
        relay, say), started once the broker is connected; it must return soon after
        ``stopping`` is set, and ``run()`` waits for it before returning."""
        self._background.append((target, name))

    def stop(self) -> None:
        """Ask :meth:`run` to finish in-flight messages and return (from the loop's thread)."""
        self._stop_asked = True
        if self._stop is not None:
            self._stop.set()

    @property
    def ready(self) -> bool:
        """Readiness (a Kubernetes readiness probe): :meth:`run` has subscribed every group
        and its dispatching tasks run, and it is not stopping."""
        return self._ready and not (self._stop is not None and self._stop.is_set())

    @property
    def alive(self) -> bool:
        """Liveness (a Kubernetes liveness probe): :meth:`run` is running (or starting) and
        none of its routes' dispatching tasks has ended on its own (e.g. on a broker error).
        False before ``run()`` and after it returned."""
        if not self._running:
            return False
        stopping = self._stop is not None and self._stop.is_set()
        return stopping or not any(task.done() for task in self._tasks)

    async def run(
        self,
        *,
        install_signal_handlers: bool = True,
        duration: float | None = None,
        on_ready: Callable[[], Any] | None = None,
    ) -> None:
        """Process messages until :meth:`stop`, SIGINT/SIGTERM or ``duration`` seconds.

        ``on_ready`` (a function or a coroutine function) runs once every group is subscribed.
        """
        if not self._routes and not self._background:
            raise RuntimeError("no handler registered; decorate an async function")
        loop = asyncio.get_running_loop()
        self._tasks = []
        self._stop = asyncio.Event()
        if self._stop_asked:
            self._stop.set()
        own = self.broker is None
        if self.broker is None:
            url, serializer, options = self._connect
            self.broker = await connect(url, serializer=serializer, **options)
        broker = self.broker
        self._running = True
        signals: list[signal.Signals] = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
                    signals.append(sig)
        consumers: list[AsyncConsumer] = []
        unwatch: list[Callable[[], None]] = []
        replies: AsyncProducer | None = None
        dead: Producer | None = None
        helpers = threading.Event()  # stops the middleware's threads
        sync_routes: list[Route] = []
        sync_replies: list[Producer] = []
        background: list[threading.Thread] = []
        try:
            for target, name in self._background:
                thread = threading.Thread(target=target, args=(helpers,), name=name, daemon=True)
                background.append(thread)
                thread.start()
            replies = await broker.producer()
            dead = await asyncio.to_thread(broker.sync.producer, serializer="bytes")

            async def subscribe(route: _Route) -> tuple[AsyncConsumer, AsyncHandler]:
                await asyncio.to_thread(ensure_dead_letter_group, broker.sync, route.group)
                chain = route.handler
                if route.middleware:
                    assert dead is not None
                    answer = await asyncio.to_thread(
                        broker.sync.producer, serializer=route.serializer
                    )
                    sync_replies.append(answer)
                    sync = Route(
                        route.topics,
                        route.group,
                        broker.sync,
                        dead,
                        serializer=route.serializer,
                        stopping=helpers,
                        replies=answer,
                        stats=route.stats,
                    )
                    sync_routes.append(sync)
                    await asyncio.to_thread(prepare_middleware, route.middleware, sync)  # type: ignore[arg-type]
                    where = AsyncRoute(route.topics, route.group, broker, sync, loop)
                    for mw in reversed(route.middleware):
                        chain = mw.wrap_async(chain, where)
                consumer = await broker.consumer(
                    route.topics,
                    group=route.group,
                    serializer=route.serializer,
                    model=route.model,
                    **route.options,
                )
                consumers.append(consumer)
                return consumer, chain

            members = await asyncio.gather(*(subscribe(r) for r in self._routes))
            self._tasks = tasks = [
                asyncio.create_task(
                    _Flow(route, chain, consumer, replies, dead, self._stop).serve()
                )
                for route, (consumer, chain) in zip(self._routes, members, strict=True)
            ]
            system = system_of(broker.url.scheme)
            for route in self._routes:
                unwatch.append(
                    watch(
                        system,
                        route.group,
                        route.topics,
                        functools.partial(broker.sync.depth, route.group, route.topics),
                    )
                )
            self._ready = True
            if on_ready is not None:
                ready = on_ready()
                if asyncio.iscoroutine(ready):
                    await ready
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration):
                    await self._stop.wait()
            self._stop.set()
            await asyncio.gather(*tasks)
        finally:
            self._stop.set()
            self._ready = False
            for forget in unwatch:
                forget()
            self._stop_asked = False  # a stop asked for this run: the next run() runs
            for sig in signals:
                loop.remove_signal_handler(sig)
            helpers.set()
            for thread in background:
                await asyncio.to_thread(thread.join)
            for sync in sync_routes:
                for thread in sync.threads:
                    await asyncio.to_thread(thread.join)
            for answer in sync_replies:
                await asyncio.to_thread(answer.close)
            for consumer in consumers:
                await consumer.close()
            if replies is not None:
                await replies.close()
            if dead is not None:
                await asyncio.to_thread(dead.close)
            if own:
                await broker.close()
                self.broker = None
            self._running = False


class _Flow:
    """One route's dispatching: receive while slots are free, run handlers per key."""

    def __init__(
        self,
        route: _Route,
        handler: AsyncHandler,
        consumer: AsyncConsumer,
        replies: AsyncProducer,
        dead: Producer,
        stop: asyncio.Event,
    ) -> None:
        self.route = route
        self.handler = handler  # the route's handler inside its middleware
        self.consumer = consumer
        self.replies = replies
        self.dead = dead
        self.stop = stop
        self.system = system_of(consumer.sync._broker.url.scheme)
        # A slot per message received and not settled (or given back on close).
        self.slots = asyncio.Semaphore(route.concurrency)
        self.keys: dict[str, deque[AsyncMessage]] = {}
        self.running: set[asyncio.Task[None]] = set()
        # Keys nacked while a receive was under way: what it returns for such a key may have
        # been handed out before the nack, ahead of the nacked message.
        self.receiving = False
        # key -> ids of the messages nacked (the redelivery of one of them is not "ahead")
        self.nacked_during_receive: dict[str, set[str]] = {}

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def serve(self) -> None:
        stopping = asyncio.create_task(self.stop.wait())
        try:
            while not self.stop.is_set():
                await self.slots.acquire()
                self.nacked_during_receive.clear()
                self.receiving = True
                receiving = asyncio.create_task(self.consumer.receive())
                try:
                    await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not receiving.done():
                        receiving.cancel()  # the message stays with the consumer: given back
                        with contextlib.suppress(asyncio.CancelledError):
                            await receiving
                finally:
                    self.receiving = False
                message = None if receiving.cancelled() else receiving.result()
                if message is None:
                    self.slots.release()
                    continue
                key = message.key
                if (
                    key is not None
                    and key in self.nacked_during_receive
                    and message.id not in self.nacked_during_receive[key]
                ):
                    # Possibly handed out before a nack of its key: back behind it, in order.
                    self.slots.release()
                    with contextlib.suppress(Exception):
                        await message.nack()
                elif key is None:
                    self.start(self.one(message))
                elif key in self.keys:
                    self.keys[key].append(message)
                else:
                    self.keys[key] = deque([message])
                    self.start(self.in_order(key))
        finally:
            stopping.cancel()
            if self.running:
                await asyncio.gather(*self.running, return_exceptions=True)

    async def one(self, message: AsyncMessage) -> None:
        try:
            await self.process(message, None)
        finally:
            self.slots.release()

    async def in_order(self, key: str) -> None:
        queue = self.keys[key]
        try:
            while queue and not self.stop.is_set():
                message = queue[0]
                try:
                    await self.process(message, key)
                finally:
                    if queue and queue[0] is message:
                        queue.popleft()
                    self.slots.release()
        finally:
            # What is left was received and not started: closing the consumer gives it back.
            for _ in queue:
                self.slots.release()
            del self.keys[key]

    async def process(self, message: AsyncMessage, key: str | None) -> None:
        route = self.route
        outcome = dispatching(self.system, route.group, route.stats, message.sync)
        try:
            if message.error is not None:
                log.error("dead-lettering undecodable message %s: %s", message.id, message.error)
                error, dead = message.error, self.dead

                def dead_letter() -> None:
                    send_dead_letter(dead, message.sync, route.group, error)
                    dead.flush()

                outcome.decided = True  # never ran: neither processed nor failed
                try:
                    await asyncio.to_thread(dead_letter)
                except Exception as exc:  # the broker refused: keep it, and keep consuming
                    log.exception("could not dead-letter %s; giving it back", message.id)
                    outcome.decided = False  # it is a failure after all: counted as one
                    outcome.add("failed", exc)
                    await self.nack_in_order(message, key)
                    return
                await message.ack()
                outcome.add("dead_lettered", error)
                return
            try:
                result = await self.handler(message)
                if message.settled is None and result is not None and message.reply_to:
                    await self.replies.reply(message, result)
                    await self.replies.flush()
            except Exception as exc:
                log.exception(
                    "handler for %s in group %r failed on %r", message.topic, route.group, message
                )
                outcome.add("failed", exc)
                if message.settled is None:
                    await self.nack_in_order(message, key)
                return
            if message.settled is None:
                await message.ack()
            elif message.settled == "nack":  # the handler gave it back: its key's followers too
                await self.nack_in_order(None, key)
        finally:
            outcome.finish()

    async def nack_in_order(self, message: AsyncMessage | None, key: str | None) -> None:
        """Nack ``message``, then the messages of its key queued behind it (taken before the
        nack, so its redelivery cannot be among them)."""
        behind: list[AsyncMessage] = []
        if key is not None:
            queue = self.keys[key]
            head = queue.popleft()
            if self.receiving:
                self.nacked_during_receive.setdefault(key, set()).add(head.id)
            behind = list(queue)
            queue.clear()
            queue.append(head)  # popped by in_order
        if message is not None:
            await message.nack()
        for later in behind:
            self.slots.release()  # it left the queue
            with contextlib.suppress(Exception):
                await later.nack()
