"""``rocketmq://`` consumer: a ``SimpleConsumer`` of the group that pops batches with an
invisible duration (``visibility_timeout``) and hands them out one message at a time.

``ack`` acks the receipt handle; ``nack`` changes the invisible duration to the requested delay
(RocketMQ redelivers with ``delivery_attempt`` + 1); ``close`` makes what was received but not
acked visible again at once. A poll outlives a ``receive`` that gave up: what it brings lands in
the buffer, and ``receive(timeout=0)`` hands out what is buffered.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped,unused-ignore]

from mqkit.adapter import ConsumerBase, Deadline, Delivery
from mqkit.errors import BrokerUnavailable, MqkitError
from mqkit_rocketmq import wire
from mqkit_rocketmq._grpc import Code, model, rpc, simple, start
from mqkit_rocketmq.settings import Settings

if TYPE_CHECKING:
    from mqkit_rocketmq.backend import Backend

log = logging.getLogger("mqkit.rocketmq")


class _SimpleConsumer(simple.SimpleConsumer):  # type: ignore[misc]
    """The official SimpleConsumer, remembering whether the server says its group is FIFO, and
    able to send its settings again at once."""

    fifo: bool | None = None
    _resent_at = 0.0

    def reset_setting(self, settings: Any) -> None:
        if settings is not None and settings.HasField("subscription"):
            self.fifo = bool(settings.subscription.fifo)
        super().reset_setting(settings)

    def resend_settings(self) -> None:
        """Make the telemetry stream again and send the subscription settings on it.

        A restarted proxy knows no subscription, and answers a receive with an error (5.3.3: a
        NullPointerException, "settings is null") until the client sends its settings again;
        the client's own stream ends with the old connection and its settings are sent again
        only every 5 minutes. At most once a second; runs on the client's I/O loop, where gRPC's
        asyncio calls must be made.
        """
        now = time.monotonic()
        if now - self._resent_at < 1.0:
            return
        self._resent_at = now
        manager = getattr(self, "_Client__telemetry_manager", None)
        if manager is None:
            return

        def resend() -> None:
            try:
                for endpoints in self.route_manager.get_all_endpoints().values():
                    manager.retrieve_telemetry_stream_stream_call(endpoints, rebuild=True)
                    manager.setting_write(endpoints)
            except Exception as exc:  # the next failed poll tries again
                log.info("could not send the consumer's settings again: %s", exc)

        rpc.RpcClient.get_channel_io_loop().call_soon_threadsafe(resend)


class PerMessage:
    """A number per message (group, topic, message id), shared by the consumers of one
    connection; bounded, oldest entries forgotten first. Three of them per connection:

    * ``unseen``: deliveries RocketMQ counted that the application never saw. RocketMQ counts
      every pop. A consumer that polls a batch and gives part of it back unseen (on close,
      behind a nacked message of the same key, or because it could not keep a buffered message
      invisible) would otherwise report ``attempt`` one too high when that message comes back.
    * ``handed``: the ``attempt`` a message had when the application gave it back (a nack, or
      a close while it was unsettled). In a FIFO group RocketMQ 5 reports as the attempt of a
      redelivered message the *lowest* count of its batch from that queue, so a nacked message
      that comes back in one batch with new messages would say attempt 1 again; it comes back
      with at least this + 1.
    * ``acked``: messages acked in FIFO groups. A FIFO group's position in a queue only moves
      past messages acked *in queue order*: when an earlier message of the queue goes back (a
      nack of another key, a close), RocketMQ delivers the later ones again even though they
      were acked. Such a message is acked again and not handed out.
    """

    LIMIT = 50_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: OrderedDict[tuple[str, str, str], int] = OrderedDict()

    def add(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._counts[key] = self._counts.pop(key, 0) + 1
            self._trim()

    def set(self, key: tuple[str, str, str], value: int) -> None:
        with self._lock:
            self._counts.pop(key, None)
            self._counts[key] = value
            self._trim()

    def _trim(self) -> None:
        if len(self._counts) > self.LIMIT:
            self._counts.popitem(last=False)

    def get(self, key: tuple[str, str, str]) -> int:
        if not self._counts:  # the usual case: nothing was ever recorded
            return 0
        with self._lock:
            return self._counts.get(key, 0)

    def discard(self, key: tuple[str, str, str]) -> None:
        if self._counts:
            with self._lock:
                self._counts.pop(key, None)


class _Held:
    """A received message and when its invisible time (last) started."""

    __slots__ = ("message", "since")

    def __init__(self, message: Any, since: float) -> None:
        self.message = message
        self.since = since


class Consumer(ConsumerBase):
    """A SimpleConsumer of ``group``; pops batches and hands them out one by one."""

    def __init__(
        self, backend: Backend, topics: Sequence[str], group: str, settings: Settings
    ) -> None:
        super().__init__()
        self._backend = backend
        self._unseen = backend.unseen
        self._handed = backend.handed
        self._acked = backend.acked
        self._group = wire.rocketmq_name("group", group)
        self._mqkit_group = group
        self._names: dict[str, str] = {}
        self._temporary = settings.temporary
        for name in topics:
            topic = wire.rocketmq_name("topic", name)
            backend.check_topic(topic, name, create=self._temporary)
            self._names[topic] = name
        self._visibility = settings.visibility_timeout
        self._prefetch = prefetch = settings.prefetch
        # Batch size of the next poll: starts at 1 and doubles up to ``prefetch`` while the
        # application works through a batch in well under half the invisible duration.
        self._batch = 1
        self._landed_at = 0.0
        self._landed = 0
        self._cv = threading.Condition()
        self._buffer: deque[Delivery] = deque()
        self._inflight: dict[int, Delivery] = {}  # handed out, unsettled; by id(message)
        self._pending: Future[Any] | None = None
        self._error: MqkitError | None = None
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._closing = False
        self._warned_fifo = False
        backend.provision("group", self._group, create=self._temporary)
        filters = {topic: model.FilterExpression() for topic in self._names}
        try:
            self._client = _SimpleConsumer(
                backend.config,
                self._group,
                filters,
                await_duration=settings.long_polling_timeout,
                tls_enable=backend.settings.tls,
            )
            start(self._client)
        except MqkitError:
            raise
        except Exception as exc:
            raise backend.error(exc, f"starting consumer group {group!r}") from None
        # The subscription exists once the proxy has answered the client's settings.
        event = getattr(self._client, "_init_settings_event", None)
        if event is not None and not event.wait(backend.settings.subscribe_timeout):
            self._client.shutdown()
            raise BrokerUnavailable(
                f"the {backend.server} did not confirm the subscription of group {group!r} "
                f"within {backend.settings.subscribe_timeout} s (option subscribe_timeout)"
            )
        try:
            backend.start_at_end(self._group, list(self._names), group)
        except MqkitError:
            self._client.shutdown()
            raise
        if self._client.fifo:
            # A FIFO group's queue belongs to whoever popped from it until that batch is
            # settled: the messages behind a small first batch would wait for it anyway.
            self._batch = prefetch

    # -- receiving -------------------------------------------------------------------------

    def receive(self, timeout: float | None) -> Delivery | None:
        deadline = Deadline(timeout)
        while True:
            stale = self._next(deadline)
            if stale is None or isinstance(stale, Delivery):
                return stale
            # A buffered message whose invisible time is half gone: renew it before handing
            # it out, so the handler gets at least half the invisible duration (renewing does
            # not count as a delivery; giving it back would).
            delivery, held = stale
            renewed = self._renew(held)
            with self._cv:
                if renewed and not self._closing:
                    self._inflight[id(held.message)] = delivery
                    return delivery
            self._give_back([held.message])
            if self._closing:
                return None

    def _next(self, deadline: Deadline) -> Delivery | tuple[Delivery, _Held] | None:
        """The next buffered delivery, or one that must be renewed first; polls as needed."""
        with self._cv:
            while True:
                if self._closing:
                    return None
                now = time.monotonic()
                if self._buffer:
                    delivery = self._buffer.popleft()
                    held: _Held = delivery.handle
                    if now - held.since < self._visibility / 2:
                        self._inflight[id(held.message)] = delivery
                        return delivery
                    return delivery, held
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._pending is None and now >= self._retry_at:
                    self._start_poll(now)
                    continue
                waits: list[float] = []
                left = deadline.remaining()
                if left is not None:
                    if left <= 0:
                        return None
                    waits.append(left)
                if self._pending is None:
                    waits.append(self._retry_at - now)
                self._cv.wait(min(waits) if waits else None)

    def _renew(self, held: _Held) -> bool:
        try:
            self._client.change_invisible_duration(held.message, self._visibility)
        except Exception as exc:  # its invisible time ran out: it is someone else's now
            log.info("could not renew buffered message %s: %s", held.message.message_id, exc)
            return False
        held.since = time.monotonic()
        return True

    def _start_poll(self, now: float) -> None:
        """Start one long poll (with the lock held, buffer empty); its batch lands in the buffer."""
        if self._failing_since is not None and now - self._retry_at > 1.0:
            # Nobody received for a while after the last failed poll: the time that passed
            # does not count against connect_timeout (a poll that failed while the proxy
            # restarted must not fail the first receive after it is back).
            self._failing_since = None
        if self._landed:
            # The application went through the last batch at this pace: grow the batch while
            # it would still be handed out within half the invisible duration.
            pace = (now - self._landed_at) / self._landed
            fits = int(self._visibility / 2 / pace) if pace > 0 else self._prefetch
            self._batch = max(1, min(self._prefetch, 2 * self._batch, fits))
            self._landed = 0
        # A consumer holding k unsettled messages (a worker pool) gets at least k + 1.
        batch = max(self._batch, min(self._prefetch, 1 + len(self._inflight)))
        try:
            future: Future[Any] = self._client.receive_async(batch, self._visibility)
        except Exception as exc:
            self._poll_failed(exc)
            return
        self._pending = future
        future.add_done_callback(self._polled)

    def _polled(self, future: Future[Any]) -> None:
        exc = future.exception()
        with self._cv:
            self._pending = None
            if exc is not None:
                self._poll_failed(exc)
                self._cv.notify_all()
                return
            self._failing_since = None
            messages = future.result() or []
            again = []
            if self._client.fifo:
                again = [m for m in messages if self._acked.get(self._key(m))]
                if again:
                    messages = [m for m in messages if not self._acked.get(self._key(m))]
            if self._closing:
                release = messages
            else:
                release = []
                now = time.monotonic()
                for message in messages:
                    self._buffer.append(self._delivery(message, now))
                if messages:
                    self._landed_at, self._landed = now, len(messages)
            self._cv.notify_all()
        self._give_back(release)  # closed meanwhile
        for message in again:  # acked before, delivered again by FIFO queue order: ack again
            log.debug("acking message %s again (acked before)", message.message_id)
            try:
                self._client.ack_async(message)
            except Exception as exc:  # it comes back, and is acked again then
                log.info("could not ack message %s again: %s", message.message_id, exc)

    def _poll_failed(self, exc: BaseException) -> None:
        error = self._backend.error(
            exc, f"receiving for group {self._mqkit_group!r}", *self._topic_hint()
        )
        now = time.monotonic()
        transient = isinstance(error, BrokerUnavailable)
        if transient:
            # The proxy may be back after a restart without our subscription.
            self._client.resend_settings()
        if transient and self._failing_since is None:
            self._failing_since = now
        if transient and now - (self._failing_since or now) < self._backend.connect_timeout:
            log.warning("RocketMQ receive failed, retrying: %s", error)
            self._retry_at = now + 0.5
            return
        self._failing_since = None
        self._retry_at = now + 0.5
        self._error = error

    def _topic_hint(self) -> tuple[str, str]:
        if len(self._names) == 1:
            topic, name = next(iter(self._names.items()))
            return topic, name
        return "", ""

    def _key(self, message: Any) -> tuple[str, str, str]:
        return (self._group, message.topic, message.message_id)

    def _delivery(self, message: Any, received_at: float) -> Delivery:
        key = self._key(message)
        attempt = max(
            (message.delivery_attempt or 1) - self._unseen.get(key), self._handed.get(key) + 1
        )
        delivery = wire.from_client(
            message,
            self._names.get(message.topic, message.topic),
            max(1, attempt),
            _Held(message, received_at),
        )
        if delivery.key is not None and self._client.fifo is False and not self._warned_fifo:
            self._warned_fifo = True
            log.warning(
                "consumer group %r is not FIFO on the %s: messages of one key may be "
                "processed out of order; make it FIFO with `mqadmin updateSubGroup -g %s -o true`",
                self._group,
                self._backend.server,
                self._group,
            )
        return delivery

    # -- settling --------------------------------------------------------------------------

    def _settle(self, delivery: Delivery, what: str, call: Callable[[], None]) -> None:
        message = delivery.handle.message
        with self._cv:
            self._inflight.pop(id(message), None)
        try:
            self._call_reconnecting(call)
        except Exception as exc:
            if getattr(exc, "code", None) == Code.INVALID_RECEIPT_HANDLE:
                log.warning(
                    "%s of message %s on %r came after its invisible time ran out; it may be "
                    "delivered again (raise visibility_timeout for slow handlers)",
                    what,
                    delivery.id,
                    delivery.topic,
                )
                return
            raise self._backend.error(exc, f"{what} of message {delivery.id}") from None

    def _call_reconnecting(self, call: Callable[[], None]) -> None:
        """``call()``, retried for ``connect_timeout`` while the proxy cannot be connected to.

        A message handed out from the buffer is settled without a poll before it, so after the
        proxy restarts the settling call can be the first to meet the client's channel still
        reconnecting. "Cannot connect" means the request never reached the proxy: safe to
        repeat.
        """
        give_up = time.monotonic() + self._backend.connect_timeout
        while True:
            try:
                call()
                return
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= give_up:
                    raise
                log.info("RocketMQ proxy unavailable, retrying: %s", exc)
                time.sleep(0.2)

    def ack(self, delivery: Delivery) -> None:
        message = delivery.handle.message
        self._settle(delivery, "ack", lambda: self._client.ack(message))
        self._acked_now(message)

    def _acked_now(self, message: Any) -> None:
        key = self._key(message)
        self._unseen.discard(key)
        self._handed.discard(key)
        if self._client.fifo:
            self._acked.set(key, 1)

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        message = delivery.handle.message
        if not requeue:
            self._settle(delivery, "nack", lambda: self._client.ack(message))
            self._acked_now(message)
            return
        self._handed.set(self._key(message), delivery.attempt)
        later: list[Any] = []
        if message.message_group:
            # Buffered successors of the same key hold its message group: give them back so
            # the nacked message comes first again.
            with self._cv:
                keep: deque[Delivery] = deque()
                for d in self._buffer:
                    m = d.handle.message
                    if m.message_group == message.message_group and m.topic == message.topic:
                        later.append(m)
                    else:
                        keep.append(d)
                self._buffer = keep
        seconds = max(0, math.ceil(delay))
        self._settle(
            delivery,
            "nack",
            lambda: self._client.change_invisible_duration(message, seconds),
        )
        self._give_back(later)

    def _give_back(self, messages: Sequence[Any]) -> None:
        """Make messages the application never saw visible again (counting that delivery)."""
        for message in messages:
            self._unseen.add(self._key(message))
            self._release(message)

    def _release(self, message: Any) -> None:
        try:
            self._client.change_invisible_duration(message, 0)
        except Exception as exc:  # it comes back when its invisible time runs out instead
            log.info("could not give back message %s: %s", message.message_id, exc)

    def _close(self) -> None:
        with self._cv:
            self._closing = True
            unseen = [d.handle.message for d in self._buffer]
            seen = list(self._inflight.values())
            self._buffer.clear()
            self._inflight.clear()
            pending = self._pending
            self._cv.notify_all()
        self._give_back(unseen)
        for delivery in seen:
            self._handed.set(self._key(delivery.handle.message), delivery.attempt)
            self._release(delivery.handle.message)
        if pending is None:
            self._shutdown()
            return
        # A long poll is still out. Shutting the client down would cancel the call, but the
        # proxy keeps the poll waiting on the broker: what it takes afterwards (such as the
        # messages just given back) cannot be written to us and stays invisible for the whole
        # visibility_timeout. So the poll runs out (at most long_polling_timeout), what it
        # brings is given back at once (see _polled), and then the client shuts down.
        pending.add_done_callback(
            lambda _: threading.Thread(
                target=self._shutdown, name="mqkit-rocketmq-close", daemon=True
            ).start()
        )

    def _shutdown(self) -> None:
        try:
            self._client.shutdown()
        except Exception as exc:
            log.warning("RocketMQ consumer shutdown: %s", exc)
        if self._temporary:
            self._backend.delete_temporary(self._group, list(self._names))
