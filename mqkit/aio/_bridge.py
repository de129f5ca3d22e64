"""The asyncio API: the sync API's concepts, awaitable, on every backend.

A bridge over the sync drivers, so every adapter is async without an async client of its own.
The event loop never runs a blocking client call:

* a driver that implements the optional nowait calls (:class:`mqkit.spi.NowaitConsumer`,
  :class:`mqkit.spi.NowaitProducer`) is called inline on the loop when that cannot wait: a
  ``receive()`` takes a delivery the driver already holds in memory, an ``ack()`` settles
  when the driver can without waiting, a ``send()`` buffers when the driver has room. Only
  when nothing is outstanding at the threads below, so order is kept (decoding then runs on
  the loop too); when the driver says no, the threads do it. This saves the thread hops
  (about 55 µs each) where the driver's own work is a few microseconds (SQLite's prefetched
  rows and in-process acks);
* each :class:`AsyncConsumer` has one receiving thread that calls the sync ``receive`` when a
  ``receive()`` waits (plus ``read_ahead`` messages ahead, 0 by default) and hands messages to
  the loop (``call_soon_threadsafe``); between requests it sleeps on a semaphore, it never
  polls; decoding and model validation happen on that thread;
* settling (``ack``/``nack``) not done inline runs on one settling thread per consumer, in
  order; it is queued before the coroutine waits, so a cancelled ``await message.ack()`` still
  acks (an error then is logged, as nobody is left to raise it to); an inline ack is done
  before the coroutine's first suspension, so cancelling cannot undo it either;
* each :class:`AsyncProducer` encodes on the loop (argument errors raise at once) and hands the
  encoded message to the driver inline or to one sender thread, which calls the driver;
  ``send`` returns once the message is handed over (as the sync ``send`` may buffer),
  ``flush`` once everything sent before it is confirmed; an error of the driver raises from
  the ``send`` that met it inline, else from the next ``send``/``flush``/``close``;
* rare calls (connect, creating a consumer, ``request``, close) run in the loop's default
  executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from mqkit import observe
from mqkit.client import Broker, Consumer, Producer
from mqkit.client import connect as _connect
from mqkit.config import BrokerURL
from mqkit.envelope import HeaderValue
from mqkit.errors import ClosedError, ConfigError, DecodeError, MessageStateError
from mqkit.message import (
    Delivery,
    Headers,
    Message,
    OutgoingMessage,
    already_settled,
    check_ack_batch,
)
from mqkit.serialization import Serializer
from mqkit.spi import Features

__all__ = [
    "AsyncBroker",
    "AsyncConsumer",
    "AsyncMessage",
    "AsyncProducer",
    "connect",
]

log = logging.getLogger("mqkit.aio")

T = TypeVar("T")

#: Messages a producer queues for its sender thread before ``send`` waits for room.
MAX_QUEUED = 1000
#: ``send`` lets other tasks run once every this many calls.
YIELD_EVERY = 32


class _Opening(Generic[T]):
    """What ``connect()``, ``producer()`` and ``consumer()`` return: await it, or use it as
    ``async with`` (closed on exit)."""

    def __init__(self, open_: Callable[[], Awaitable[T]]) -> None:
        self._open = open_
        self._value: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._open().__await__()

    async def __aenter__(self) -> T:
        self._value = await self._open()
        return self._value

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._value is not None:
            await self._value.close()  # type: ignore[attr-defined]


async def _off_loop(call: Callable[[], T], on_orphan: Callable[[T], Any] | None = None) -> T:
    """``call()`` in the default executor. If the caller is cancelled, the call still ends,
    and what it made is handed to ``on_orphan`` (e.g. closed) instead of being lost."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_orphan is not None:

            def orphan(done: asyncio.Future[T]) -> None:
                if not done.cancelled() and done.exception() is None:
                    loop.run_in_executor(None, on_orphan, done.result())

            future.add_done_callback(orphan)
        raise


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def connect(
    url: str | None = None, *, serializer: str | Serializer | None = None, **options: Any
) -> _Opening[AsyncBroker]:
    """Connect as :func:`mqkit.connect` does (same URL resolution and options), for asyncio:
    ``async with mqkit.aio.connect(url) as broker`` or ``broker = await mqkit.aio.connect()``."""

    async def open_() -> AsyncBroker:
        broker = await _off_loop(
            lambda: _connect(url, serializer=serializer, **options), lambda b: b.close()
        )
        return AsyncBroker(broker)

    return _Opening(open_)


class AsyncBroker:
    """A connection to one backend; makes :class:`AsyncProducer` and :class:`AsyncConsumer`."""

    def __init__(self, broker: Broker) -> None:
        self.sync = broker
        self._children: weakref.WeakSet[AsyncProducer | AsyncConsumer] = weakref.WeakSet()
        self._closed = False

    @property
    def url(self) -> BrokerURL:
        return self.sync.url

    @property
    def features(self) -> Features:
        return self.sync.features

    def producer(
        self, *, serializer: str | Serializer | None = None, **options: Any
    ) -> _Opening[AsyncProducer]:
        """An :class:`AsyncProducer`: ``async with broker.producer() as producer``."""

        async def open_() -> AsyncProducer:
            self._check_open()
            sync = await _off_loop(
                lambda: self.sync.producer(serializer=serializer, **options), Producer.close
            )
            producer = AsyncProducer(sync, asyncio.get_running_loop())
            self._children.add(producer)
            return producer

        return _Opening(open_)

    def consumer(
        self,
        topics: str | Sequence[str],
        *,
        group: str,
        serializer: str | Serializer | None = None,
        model: type[Any] | None = None,
        read_ahead: int = 0,
        **options: Any,
    ) -> _Opening[AsyncConsumer]:
        """A member of ``group`` reading ``topics`` (the group exists once it is returned).

        ``read_ahead``: messages received ahead of ``receive()`` calls. 0 (the default)
        receives only for a waiting ``receive()``, exactly like the sync consumer; more hides
        the thread hop for fast handlers, but holds messages other members could take, and a
        nacked message may come back after messages of its key that were read ahead.
        ``model`` validates every value into a dataclass or pydantic model, as in the sync API.
        """
        if not isinstance(read_ahead, int) or read_ahead < 0:
            raise ConfigError("read_ahead must be an int >= 0")

        async def open_() -> AsyncConsumer:
            self._check_open()
            sync = await _off_loop(
                lambda: self.sync.consumer(
                    topics, group=group, serializer=serializer, model=model, **options
                ),
                Consumer.close,
            )
            consumer = AsyncConsumer(sync, asyncio.get_running_loop(), read_ahead)
            self._children.add(consumer)
            return consumer

        return _Opening(open_)

    async def ping(self, timeout: float = 5.0) -> float:
        """:meth:`mqkit.Broker.ping`: the round trip in seconds, or
        :class:`~mqkit.errors.BrokerUnavailable` within about ``timeout`` seconds."""
        self._check_open()
        return await _off_loop(lambda: self.sync.ping(timeout))

    async def declare(self, topics: str | Sequence[str], *, group: str, **options: Any) -> None:
        """:meth:`mqkit.Broker.declare`: create ``group`` of ``topics`` ahead of time."""
        self._check_open()
        await _off_loop(lambda: self.sync.declare(topics, group=group, **options))

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"broker {self.url} is closed; create a new one")

    async def close(self) -> None:
        """Close every producer (flushing) and consumer made here, then the connection."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for child in list(self._children):
            try:
                await child.close()
            except Exception as exc:
                errors.append(exc)
        await _off_loop(self.sync.close)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncBroker({self.url.redacted()!r})"


class _Call:
    """Work for the sender thread besides sends: a flush, a close, a barrier."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future


_STOP = object()


class AsyncProducer:
    """Sends messages from coroutines; one sender thread calls the sync driver."""

    def __init__(self, producer: Producer, loop: asyncio.AbstractEventLoop) -> None:
        self.sync = producer
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        self._room: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._sends = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mqkit-aio-send", daemon=True)
        self._thread.start()
        # A program that exits without closing still sends what was queued (then the sync
        # producer's own finalizer, made before this one and so run after it, flushes).
        self._finalizer = weakref.finalize(self, _drain, self._queue, self._thread)

    # -- the sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        driver = self.sync._driver
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, OutgoingMessage):
                try:
                    driver.send(item)
                except BaseException as exc:
                    if self._error is None:
                        self._error = exc
            else:
                try:
                    result, error = item.fn(), None
                except BaseException as exc:
                    result, error = None, exc
                self._post(_resolve, item.future, result, error)
            with self._lock:
                self._queued -= 1
                wake = self._room is not None and self._queued < MAX_QUEUED
            if wake:
                self._post(self._wake)

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    # -- the loop --------------------------------------------------------------------------

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def _enqueue(self, item: Any) -> None:
        while True:
            with self._lock:
                if self._queued < MAX_QUEUED:
                    self._queued += 1
                    self._queue.put(item)
                    return
                if self._room is None:
                    self._room = self._loop.create_future()
                room = self._room
            await asyncio.shield(room)  # shared: one cancelled waiter must not cancel it

    async def _call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the sender thread, after everything queued before; not cancelled with
        the caller."""
        future: asyncio.Future[T] = self._loop.create_future()
        await self._enqueue(_Call(fn, future))
        return await asyncio.shield(future)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"producer on {self.sync._broker.url} is closed; create a new one")

    async def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """:meth:`mqkit.Producer.send`: queue ``value`` for ``topic``; return its id
        (``message_id`` when given, as in the sync API).

        Arguments are checked and the value encoded before this returns; the message is
        confirmed by :meth:`flush` (or :meth:`close`). Waits only when ``MAX_QUEUED`` messages
        are waiting for the sender thread. Cancelled while waiting, the message is not sent.
        """
        self._check_open()
        self._raise_error()
        message = self.sync._encode(
            topic,
            value,
            key=key,
            headers=headers,
            content_type=content_type,
            content_encoding=content_encoding,
            correlation_id=correlation_id,
            reply_to=reply_to,
            message_id=message_id,
        )
        await self._send(message)
        self._sends += 1
        if self._sends % YIELD_EVERY == 0:
            # A send that finds room completes without suspending: a tight send loop would
            # hold the loop; give other tasks a turn now and then.
            await asyncio.sleep(0)
        return message.id

    async def reply(
        self,
        request: AsyncMessage,
        value: Any,
        *,
        headers: Mapping[str, HeaderValue] | None = None,
        content_type: str | None = None,
    ) -> str:
        """:meth:`mqkit.Producer.reply`: answer ``request`` on its ``reply_to`` destination,
        taken as the requester gave it."""
        self._check_open()
        self._raise_error()
        message = self.sync.reply_message(
            request.sync, value, headers=headers, content_type=content_type
        )
        await self._send(message)
        return message.id

    async def _send(self, message: OutgoingMessage) -> None:
        """Hand ``message`` over; instrumented, the send's span covers the encoding and the
        hand-over (the driver's send follows on the sender thread, if it went there)."""
        hooks = observe.active
        if hooks is None:
            await self._hand_over(message)
            return
        scope = hooks.sending(self.sync._broker.system, message)
        try:
            await self._hand_over(message)
        except BaseException as exc:
            scope.end(exc)
            raise
        scope.end(None)

    async def _hand_over(self, message: OutgoingMessage) -> None:
        """To the driver inline if it takes it without waiting and nothing queued before it
        is still waiting for the sender thread (order); else to the sender thread."""
        if self._queued == 0 and self.sync._send_nowait(message):
            return
        await self._enqueue(message)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far is confirmed by the backend."""
        self._check_open()
        await self._call(lambda: self.sync.flush(timeout))
        self._raise_error()

    async def request(
        self,
        topic: str,
        value: Any,
        *,
        timeout: float = 30.0,
        key: str | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
    ) -> AsyncMessage:
        """:meth:`mqkit.Producer.request`: send and wait for the reply (already acked)."""
        self._check_open()
        await self._call(lambda: None)  # after what was queued before it
        self._raise_error()
        reply = await _off_loop(
            lambda: self.sync.request(topic, value, timeout=timeout, key=key, headers=headers)
        )
        return AsyncMessage(reply, None)

    async def close(self) -> None:
        """Send what is queued, flush and release the producer; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            await self._call(self.sync.close)
        finally:
            self._queue.put(_STOP)
        self._raise_error()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _drain(work: queue.SimpleQueue[Any], thread: threading.Thread) -> None:
    work.put(_STOP)
    thread.join(30.0)


class _Closed:
    """The buffer's end mark: wakes every waiting ``receive()`` once the consumer closed."""


_CLOSED = _Closed()


class AsyncConsumer:
    """Receives messages of one group in coroutines: ``await receive(timeout)`` or
    ``async for``. One thread receives from the driver, ``read_ahead`` messages at most ahead."""

    def __init__(
        self, consumer: Consumer, loop: asyncio.AbstractEventLoop, read_ahead: int
    ) -> None:
        self.sync = consumer
        self.topics = consumer.topics
        self.group = consumer.group
        self._loop = loop
        self._buffer: asyncio.Queue[Message | BaseException | _Closed] = asyncio.Queue()
        self._read_ahead = read_ahead
        # Receives asked of the thread and not answered yet; receive() calls waiting now.
        self._requested = read_ahead
        self._waiting = 0
        self._credit = threading.Semaphore(read_ahead)
        self._closed = False
        self._inline = 0  # receive() calls answered inline, to yield now and then
        # Settles queued for the settling thread, and done by it (that thread writes
        # _settles_done): an ack runs inline only when they are equal, so order is kept.
        self._settles_asked = 0
        self._settles_done = 0
        self._settles: queue.SimpleQueue[_Call | object] = queue.SimpleQueue()
        self._settler = threading.Thread(target=self._settle_run, name="mqkit-aio-settle")
        self._settler.daemon = True
        self._settler.start()
        self._thread = threading.Thread(target=self._run, name="mqkit-aio-receive", daemon=True)
        self._thread.start()

    # -- the receiving thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._credit.acquire()  # a receive() waits, or read-ahead room: no polling
            item: Message | BaseException | None = None
            while item is None:
                if self._closed:
                    return
                try:
                    # Not forever: a driver slow to notice close() cannot hold the thread.
                    item = self.sync.receive(timeout=5.0)
                except ClosedError:
                    return
                except BaseException as exc:
                    item = exc
            try:
                self._loop.call_soon_threadsafe(self._arrive, item)
            except RuntimeError:  # the loop is gone; unsettled messages go back on close
                return

    def _settle_run(self) -> None:
        """The settling thread: acks and nacks in the order they were asked for."""
        while True:
            call = self._settles.get()
            if not isinstance(call, _Call):
                return
            try:
                result, error = call.fn(), None
            except BaseException as exc:
                result, error = None, exc
            self._settles_done += 1
            if call.future.cancelled():  # the caller was cancelled: the settle went on
                if error is not None:
                    log.error("settling after its caller was cancelled failed", exc_info=error)
                continue
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                self._loop.call_soon_threadsafe(_resolve, call.future, result, error)

    def _arrive(self, item: Message | BaseException) -> None:
        self._requested -= 1
        self._buffer.put_nowait(item)

    def _ask(self) -> None:
        self._requested += 1
        self._credit.release()

    # -- the loop --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def receive(self, timeout: float | None = None) -> AsyncMessage | None:
        """The next message, or ``None`` if none came within ``timeout`` seconds (or the
        consumer was closed meanwhile). ``timeout=None`` waits until one comes.

        Cancelling the call leaves the message to the next ``receive()``. ``timeout=0``
        never waits: it returns a message already received, else asks for one and returns
        ``None`` (a later call gets it).
        """
        if self._closed:
            raise ClosedError(
                f"consumer of {', '.join(self.topics)} in group {self.group!r} is closed"
            )
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        if self._buffer.empty() and self._requested == 0 and not self._read_ahead:
            # Nothing asked of the receiving thread: the driver may have one in memory.
            message = await self._receive_inline()
            if message is not None:
                return message
        try:
            if not self._buffer.empty():
                item = self._buffer.get_nowait()
            elif timeout == 0:
                # Nothing here yet: ask the thread for one, for the next call (never waits).
                if self._requested == 0:
                    self._ask()
                return None
            else:
                self._waiting += 1
                try:
                    # One receive asked of the thread per waiting call; what a call that timed
                    # out or was cancelled asked for stays in the buffer for the next one.
                    if self._requested < self._waiting:
                        self._ask()
                    async with asyncio.timeout(timeout):
                        item = await self._buffer.get()
                finally:
                    self._waiting -= 1
        except (TimeoutError, asyncio.QueueEmpty):
            return None
        if isinstance(item, _Closed):
            self._buffer.put_nowait(item)  # for the next waiter
            return None
        if self._requested + self._buffer.qsize() < self._read_ahead:
            self._ask()
        if isinstance(item, BaseException):
            raise item
        return AsyncMessage(item, self)

    async def receive_many(
        self, max_messages: int, timeout: float | None = None
    ) -> list[AsyncMessage]:
        """:meth:`mqkit.Consumer.receive_many`: waits up to ``timeout`` for the first message,
        then takes those already received, never more than ``max_messages``."""
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise ValueError(f"max_messages must be an int >= 1, not {max_messages!r}")
        first = await self.receive(timeout)
        if first is None:
            return []
        batch = [first]
        while len(batch) < max_messages and not self._closed:
            message = await self.receive(0)  # what is here already; never waits
            if message is None:
                break
            batch.append(message)
        return batch

    async def ack_many(self, messages: Iterable[AsyncMessage]) -> None:
        """:meth:`mqkit.Consumer.ack_many`, off the loop: one round trip for the batch where
        the backend has one. If the awaiting task is cancelled, the acks still happen."""
        batch = list(messages)
        # its own settled state: an AsyncMessage is marked before its sync message is acked
        check_ack_batch(
            batch,
            ours=lambda m: isinstance(m, AsyncMessage) and m._consumer is self,
            settled=lambda m: m._settled,
            owner=f"of {', '.join(self.topics)} in group {self.group!r}",
        )
        if not batch:
            return
        for message in batch:
            message._settled = "ack"
        synced = [message.sync for message in batch]
        await self._settle(batch[0], lambda: self.sync.ack_many(synced))

    async def _receive_inline(self) -> AsyncMessage | None:
        """A message the driver holds in memory (``receive_nowait``), taken on the loop: no
        thread hop. Every ``YIELD_EVERY`` calls, other tasks get a turn first (a consumer
        that always finds one would otherwise hold the loop); a call cancelled then has
        taken nothing."""
        self._inline += 1
        if self._inline % YIELD_EVERY == 0:
            await asyncio.sleep(0)
            if self._closed or not self._buffer.empty() or self._requested != 0:
                return None  # the caller's usual path handles what changed meanwhile
        message = self.sync._receive_nowait()
        return None if message is None else AsyncMessage(message, self)

    def __aiter__(self) -> AsyncIterator[AsyncMessage]:
        return self

    async def __anext__(self) -> AsyncMessage:
        """Messages until the consumer is closed."""
        while not self._closed:
            message = await self.receive()
            if message is not None:
                return message
        raise StopAsyncIteration

    async def _settle(
        self, message: AsyncMessage, settle: Callable[[], None], *, ack: bool = False
    ) -> None:
        if self._closed:
            raise ClosedError(
                f"consumer of {', '.join(self.topics)} in group {self.group!r} is closed; "
                f"message {message.id} was given back and will be delivered again"
            )
        # Nothing pending on the settling thread: ack inline if the driver can without
        # waiting; done before any await, so a cancelled caller cannot undo it.
        if (
            ack
            and self._settles_asked == self._settles_done
            and self.sync._ack_nowait(message.sync)
        ):
            return
        # Queued now, so it happens even if the caller is cancelled while it waits.
        future: asyncio.Future[None] = self._loop.create_future()
        self._settles_asked += 1
        self._settles.put(_Call(settle, future))
        await future

    async def close(self) -> None:
        """Stop receiving; settles under way finish first; what is not acked (including what
        was read ahead) goes back to the group. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._credit.release()
        self._buffer.put_nowait(_CLOSED)

        def shut() -> None:
            self._settles.put(_STOP)
            self._settler.join()  # settles asked for before close happen before it
            self.sync.close()
            self._thread.join(10.0)

        await _off_loop(shut)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncMessage:
    """A received message (:class:`mqkit.Message`) whose ``ack()``/``nack()`` are awaited."""

    __slots__ = ("_consumer", "_settled", "sync")

    def __init__(self, message: Message, consumer: AsyncConsumer | None) -> None:
        self.sync = message
        self._consumer = consumer
        self._settled: str | None = message.settled

    async def ack(self) -> None:
        """Confirm the message is processed. Inline when the driver can without waiting,
        else off the loop; if the awaiting task is cancelled, the ack still happens (an error
        then is logged)."""
        await self._settle("ack", self.sync.ack, ack=True)

    async def nack(self, requeue: bool = True, *, delay: float = 0.0) -> None:
        """:meth:`mqkit.Message.nack`: give the message back (or drop it for the group)."""
        if delay < 0:
            raise ValueError("delay must be >= 0")
        await self._settle("nack", lambda: self.sync.nack(requeue, delay=delay))

    async def _settle(self, outcome: str, settle: Callable[[], None], *, ack: bool = False) -> None:
        if self._settled is not None:
            raise already_settled(self.id, self.topic, self._settled)
        if self._consumer is None:
            raise MessageStateError(f"message {self.id} was settled by the request that got it")
        self._settled = outcome
        await self._consumer._settle(self, settle, ack=ack)

    @property
    def settled(self) -> str | None:
        """``"ack"``, ``"nack"`` or ``None`` while the message is still in flight."""
        return self._settled

    @property
    def value(self) -> Any:
        """The decoded body; raises :class:`DecodeError` if it could not be decoded."""
        return self.sync.value

    @property
    def error(self) -> DecodeError | None:
        return self.sync.error

    @property
    def delivery(self) -> Delivery:
        return self.sync.delivery

    @property
    def body(self) -> bytes:
        return self.sync.body

    @property
    def key(self) -> str | None:
        return self.sync.key

    @property
    def headers(self) -> Headers:
        return self.sync.headers

    @property
    def id(self) -> str:
        return self.sync.id

    @property
    def topic(self) -> str:
        return self.sync.topic

    @property
    def timestamp(self) -> float:
        return self.sync.timestamp

    @property
    def attempt(self) -> int:
        return self.sync.attempt

    @property
    def content_type(self) -> str | None:
        return self.sync.content_type

    @property
    def content_encoding(self) -> str | None:
        return self.sync.content_encoding

    @property
    def correlation_id(self) -> str | None:
        return self.sync.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.sync.reply_to

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.sync.metadata

    def copy_fields(self) -> dict[str, str | None]:
        """:meth:`mqkit.Message.copy_fields`."""
        return self.sync.copy_fields()

    def __repr__(self) -> str:
        return repr(self.sync).replace("Message(", "AsyncMessage(", 1)
