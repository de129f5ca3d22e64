"""The producer: one connection, one confirm-mode channel, driven by its own I/O thread.

``send`` appends to a buffer and wakes the I/O thread (pika's ``SelectConnection``), which
publishes persistent messages and tracks publisher confirms. ``flush`` waits until every
message sent before it was confirmed. If the connection drops, unconfirmed messages go back to
the front of the buffer and are published again, in order, once the thread has reconnected:
nothing confirmed is lost and nothing sent is dropped (a message may arrive twice, with the
same id, if the drop came between the broker storing it and its confirm reaching us).

A topic is a topic exchange, declared at the first send to it; an exchange of that name that
exists with another type or other settings (another team's direct, fanout or headers exchange)
is published to as it is. A topic named ``amq.*`` is a queue's address (a plain RPC client's
``reply_to``): such messages go to the default exchange, routed by that name.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.exchange_type import ExchangeType

from mqkit.adapter import Deadline, OutgoingMessage, ProducerBase
from mqkit.errors import BrokerUnavailable, ClosedError, ConfigError, DeliveryTimeout, MqkitError

from .connection import ACCESS_REFUSED, CoalescingConnection, describe, refused, unavailable
from .settings import Endpoint, Settings
from .wire import is_queue_address, properties, routing_key

log = logging.getLogger("mqkit.rabbitmq.producer")


class Producer(ProducerBase):
    """Publishes on its own connection; ``__init__`` returns once a confirm-mode channel is open,
    so a broker that cannot be used fails here, not at the first flush."""

    def __init__(self, endpoint: Endpoint, settings: Settings) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._reconnect_timeout = settings.reconnect_timeout
        self._max_buffer = settings.max_buffer
        self._max_inflight = settings.max_inflight
        self._cv = threading.Condition()
        self._pending: deque[OutgoingMessage] = deque()
        self._unconfirmed: dict[int, OutgoingMessage] = {}
        self._seq = 0
        self._conn: CoalescingConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._declared: set[str] = set()
        #: exchanges that exist with settings of their own: published to, never declared
        self._existing: set[str] = set()
        self._declaring: str | None = None
        self._wake = False
        #: After a nack, nothing is published before this (time.monotonic()): a broker that
        #: refuses (a queue without a leader) is asked again with a backoff, not in a loop.
        self._hold_until = 0.0
        self._nack_delay = 0.0
        #: The channel that was refused, while its replacement is due (see _renew_channel).
        self._renewing: pika.channel.Channel | None = None
        self._closing = False
        self._error: MqkitError | None = None
        self._error_reported = False
        self._down_since: float | None = None
        self._cause = ""
        self._host = 0
        self._ready = threading.Event()
        self._first_error: MqkitError | None = None
        #: why the last connection attempt failed (the error mqkit raises names its class)
        self._open_failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="mqkit-rabbitmq-producer", daemon=True
        )
        self._thread.start()
        budget = (endpoint.connect_timeout + 1.0) * len(endpoint.hosts) + 5.0
        if not self._ready.wait(budget):
            with self._cv:
                self._closing = True
            self._call_soon(self._close_connection)
            raise BrokerUnavailable(
                f"{endpoint.where(self._host)} is unavailable: no usable channel after {budget} s"
            )
        error = self._startup_error()
        if error is not None:
            self._thread.join(5)
            raise error

    def _startup_error(self) -> MqkitError | None:
        """What the I/O thread failed with while connecting (a method: it is set by that
        thread, after ``__init__`` set it to ``None``)."""
        return self._first_error

    def _is_closing(self) -> bool:
        with self._cv:
            return self._closing

    # -- user side -----------------------------------------------------------------------------

    def send(self, message: OutgoingMessage) -> None:
        with self._cv:
            while True:
                self._check_usable()
                if len(self._pending) + len(self._unconfirmed) < self._max_buffer:
                    break
                self._cv.wait(0.25)
            self._append(message)

    def send_nowait(self, message: OutgoingMessage) -> bool:
        """``send`` unless the buffer is full (``False``). ``_cv`` is only held for buffer
        bookkeeping, never during I/O, so taking it does not wait on the network."""
        with self._cv:
            self._check_usable()
            if len(self._pending) + len(self._unconfirmed) >= self._max_buffer:
                return False
            self._append(message)
            return True

    def _append(self, message: OutgoingMessage) -> None:
        """Buffer ``message`` and wake the I/O thread (under ``_cv``)."""
        self._pending.append(message)
        if not self._wake and self._channel is not None:
            self._wake = True
            self._call_soon(self._pump)

    def flush(self, timeout: float | None) -> None:
        deadline = Deadline(timeout)
        with self._cv:
            while self._pending or self._unconfirmed:
                self._check_usable(closing_ok=True)
                if deadline.expired:
                    left = len(self._pending) + len(self._unconfirmed)
                    state = (
                        f"; the connection is down ({self._cause}), reconnecting"
                        if self._down_since is not None
                        else ""
                    )
                    raise DeliveryTimeout(
                        f"{left} message(s) not confirmed by {self._endpoint.where(self._host)} "
                        f"after {timeout} s{state}"
                    )
                self._cv.wait(deadline.remaining(0.25))

    def _close(self) -> None:
        try:
            if not self._error_reported:  # a refusal flush() already raised is not raised again
                self.flush(None)
        finally:
            with self._cv:
                self._closing = True
                self._cv.notify_all()
                conn = self._conn
            if conn is not None:
                self._call_soon(self._close_connection)
            self._thread.join(10)

    def _check_usable(self, *, closing_ok: bool = False) -> None:
        if self._error is not None:
            self._error_reported = True
            raise self._error
        if self._closing and not closing_ok:
            raise ClosedError("producer is closed")
        if (
            self._down_since is not None
            and time.monotonic() - self._down_since > self._reconnect_timeout
        ):
            raise BrokerUnavailable(
                f"{self._endpoint.where(self._host)} is unavailable: {self._cause} "
                f"(no connection for more than reconnect_timeout={self._reconnect_timeout} s; "
                f"{len(self._pending) + len(self._unconfirmed)} message(s) wait to be sent)"
            )

    def _call_soon(self, callback: Any) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.ioloop.add_callback_threadsafe(callback)
        except Exception:  # the loop is shutting down; the reconnect path publishes instead
            log.debug("producer wake-up dropped: connection is closing")

    # -- I/O thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._is_closing():
            conn = CoalescingConnection(
                self._endpoint.parameters(self._host),
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            with self._cv:
                self._conn = conn
            conn.ioloop.start()
            with self._cv:
                self._conn = None
                self._channel = None
                self._requeue_unconfirmed()
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._cv.notify_all()
            try:
                conn.ioloop.close()
            except Exception:
                log.debug("closing the producer's I/O loop failed", exc_info=True)
            if self._is_closing():
                break
            if not self._ready.is_set():
                failures += 1
                if failures < len(self._endpoint.hosts):
                    self._host += 1
                    continue
                with self._cv:
                    failure = self._open_failure
                    self._first_error = (
                        unavailable(self._endpoint, self._host, failure)
                        if failure is not None
                        else BrokerUnavailable(
                            f"{self._endpoint.where(self._host)} is unavailable: {self._cause}"
                        )
                    )
                self._ready.set()
                return
            log.warning(
                "connection to %s lost (%s); reconnecting",
                self._endpoint.where(self._host),
                self._cause,
            )
            delay = min(0.2 * (2 ** min(failures, 4)), 2.0)
            failures += 1
            self._host += 1
            with self._cv:
                self._cv.wait_for(lambda: self._closing, delay)

    def _on_open(self, conn: pika.connection.Connection) -> None:
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, conn: pika.connection.Connection, exc: BaseException | str) -> None:
        self._cause = describe(exc) if isinstance(exc, BaseException) else str(exc)
        self._open_failure = exc if isinstance(exc, BaseException) else None
        conn.ioloop.stop()  # type: ignore[attr-defined]

    def _on_closed(self, conn: pika.connection.Connection, exc: BaseException) -> None:
        if not self._closing:
            self._cause = describe(exc)
        conn.ioloop.stop()  # type: ignore[attr-defined]

    def _close_connection(self) -> None:
        conn = self._conn
        if conn is not None and conn.is_open:
            conn.close()
        elif conn is not None and not conn.is_closing:
            conn.ioloop.stop()

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm,
            callback=lambda _frame: self._on_channel_ready(channel),
        )

    def _on_channel_ready(self, channel: pika.channel.Channel) -> None:
        with self._cv:
            self._channel = channel
            self._seq = 0
            self._hold_until = 0.0  # a new channel is tried at once
            self._declared = set(self._existing)
            self._declaring = None
            if self._down_since is not None and self._ready.is_set():
                log.warning("reconnected to %s", self._endpoint.where(self._host))
            self._down_since = None
        self._ready.set()
        self._pump()

    def _on_channel_closed(self, channel: pika.channel.Channel, exc: BaseException) -> None:
        conn = self._conn
        with self._cv:
            self._channel = None
            declaring = self._declaring
            self._declaring = None
            self._requeue_unconfirmed()
            if self._closing or conn is None or not conn.is_open:
                return
            if (
                isinstance(exc, pika.exceptions.ChannelClosedByBroker)
                and declaring is not None
                and exc.reply_code == 406
                and "inequivalent arg" in str(exc.reply_text)
            ):
                # Someone else's exchange (another type, or other flags): publish to it as is.
                log.info("exchange %r exists with settings of its own: %s", declaring, exc)
                self._existing.add(declaring)
            elif (
                isinstance(exc, pika.exceptions.ChannelClosedByBroker)
                and exc.reply_code == ACCESS_REFUSED
            ):
                what = (
                    f"the exchange for topic {declaring!r}"
                    if declaring is not None
                    else "a publish"
                )
                self._error = refused(self._endpoint.where(self._host), what, exc)
                self._cv.notify_all()
                return
            elif (
                isinstance(exc, pika.exceptions.ChannelClosedByBroker)
                and declaring is not None
                and exc.reply_code == 406
            ):
                where = self._endpoint.where(self._host)
                self._error = ConfigError(
                    f"{where} refused the exchange for topic {declaring!r}: "
                    f"{exc.reply_code} {exc.reply_text} (an exchange of that name exists with "
                    "other settings)"
                )
                self._cv.notify_all()
                return
            elif not isinstance(exc, pika.exceptions.ChannelClosedByClient):
                log.warning("producer channel closed (%s); reopening", describe(exc))
        conn.channel(on_open_callback=self._on_channel_open)

    def _requeue_unconfirmed(self) -> None:
        """Called with the lock held: unconfirmed messages go first, in their order."""
        if self._unconfirmed:
            self._pending.extendleft(reversed(list(self._unconfirmed.values())))
            self._unconfirmed.clear()

    def _pump(self) -> None:
        """Publish what is pending, as far as declared exchanges and the in-flight cap allow."""
        with self._cv:
            self._wake = False
            channel = self._channel
            if channel is None or self._declaring is not None:
                return
            if time.monotonic() < self._hold_until:
                return  # a nack's backoff: its call_later pumps
            batch: list[OutgoingMessage] = []
            room = self._max_inflight - len(self._unconfirmed)
            while self._pending and len(batch) < room:
                message = self._pending[0]
                if message.topic not in self._declared and not is_queue_address(message.topic):
                    if not batch:
                        self._declaring = message.topic
                    break
                self._pending.popleft()
                self._seq += 1
                self._unconfirmed[self._seq] = message
                batch.append(message)
            declaring = self._declaring
            self._cv.notify_all()
        conn = channel.connection
        assert isinstance(conn, CoalescingConnection)
        with conn.corked():  # the batch in one socket write
            for message in batch:
                if is_queue_address(message.topic):
                    exchange, routing = "", message.topic
                else:
                    exchange, routing = message.topic, routing_key(message.key, message.id)
                channel.basic_publish(exchange, routing, message.body, properties(message))
        if declaring is not None and not batch:
            channel.exchange_declare(
                declaring,
                exchange_type=ExchangeType("topic"),
                durable=True,
                callback=lambda _frame: self._on_declared(declaring),
            )
        elif batch and self._pending:
            # More to do (a new topic or a full in-flight window): continue after I/O.
            self._call_soon(self._pump)

    def _on_declared(self, topic: str) -> None:
        with self._cv:
            self._declared.add(topic)
            self._declaring = None
        self._pump()

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        tag = method.delivery_tag
        multiple = method.multiple
        with self._cv:
            if multiple:
                done = list(itertools.takewhile(lambda seq: seq <= tag, self._unconfirmed))
            else:
                done = [tag] if tag in self._unconfirmed else []
            messages = [self._unconfirmed.pop(seq) for seq in done]
            refused = isinstance(method, pika.spec.Basic.Nack) and bool(messages)
            first = refused and self._nack_delay == 0.0
            if refused:
                self._pending.extendleft(reversed(messages))
                self._nack_delay = min(max(self._nack_delay * 2, 0.05), 1.0)
                self._hold_until = time.monotonic() + self._nack_delay
                delay = self._nack_delay
            elif messages:
                self._nack_delay = 0.0
            self._cv.notify_all()
        if refused:
            log.log(
                logging.WARNING if first else logging.DEBUG,  # once per run of refusals
                "RabbitMQ refused %d message(s); sending them again in %.2f s",
                len(messages),
                delay,
            )
            conn = self._conn
            with self._cv:
                channel, due = self._channel, self._renewing is None
                if due:
                    self._renewing = channel
            if conn is not None and due:
                conn.ioloop.call_later(delay, self._renew_channel)
            return
        self._pump()

    def _renew_channel(self) -> None:
        """After a nack's backoff, publish again on a new channel. A channel that was refused
        for a quorum queue whose leader died may go on refusing it after a new leader is
        elected (seen on RabbitMQ 3.10, until the old node is back); a new channel asks for
        the current leader. What the old one had not confirmed is sent again, in order."""
        with self._cv:
            channel, self._renewing = self._renewing, None
        if channel is not None and channel is self._channel and channel.is_open:
            channel.close()  # _on_channel_closed requeues and opens the next one
        else:
            self._pump()
