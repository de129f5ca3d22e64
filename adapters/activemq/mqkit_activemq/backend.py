"""mqkit's ActiveMQ Classic backend over STOMP (stomp.py).

Mapping (ActiveMQ's default virtual topics, no broker configuration needed):

* topic ``T``  → messages are sent to ``/topic/VirtualTopic.T``;
* group ``G``  → the consumer subscribes to the queue ``/queue/Consumer.G.VirtualTopic.T``, which
  ActiveMQ creates on first subscription and from then on fills with a copy of every message sent
  to the virtual topic: each group gets every message, members of a group compete for them;
* key          → ``JMSXGroupID`` (message groups: one member of a group holds a key at a time, so
  per-key order holds with several consumers);
* send         → persistent SEND with a receipt; ``flush`` waits for every receipt;
* ack          → ``ack: client-individual`` subscriptions with ``activemq.prefetchSize``; an ACK
  carries a receipt and ``ack()`` returns once the broker confirmed it (``confirm_acks``);
* nack(requeue) → a copy with ``mqkit.attempt`` + 1 (and ``AMQ_SCHEDULED_DELAY`` for a delay,
  when the broker's scheduler is enabled) is sent to the group's queue with a receipt, then the
  original is acked. A STOMP NACK is ActiveMQ's "poison ack": it dead-letters at once, so it is
  only used for ``nack(requeue=False)`` with the ``dlq`` option.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mqkit.config import BrokerURL
from mqkit.errors import BrokerUnavailable, ClosedError, ConfigError, DeliveryTimeout, MqkitError
from mqkit.message import Delivery, OutgoingMessage
from mqkit.options import Options
from mqkit.spi import Features
from mqkit_activemq import frames
from mqkit_activemq.link import Link, Settings

log = logging.getLogger("mqkit.activemq")

DEFAULT_PORTS = {"stomp": 61613, "stomp+ssl": 61614}


def topic_destination(topic: str) -> str:
    return f"/topic/VirtualTopic.{topic}"


def group_segment(group: str) -> str:
    """A group name as one ActiveMQ name segment: ``.`` separates segments, so it becomes ``~``
    (not a character mqkit allows in names, so the mapping stays one-to-one)."""
    return group.replace(".", "~")


def group_destination(topic: str, group: str) -> str:
    return f"/queue/Consumer.{group_segment(group)}.VirtualTopic.{topic}"


class ActiveMQProducer:
    """Pipelines persistent SENDs, each with a receipt; keeps every unconfirmed message so it can
    be sent again on a new connection after a drop (at-least-once)."""

    def __init__(self, settings: Settings, *, max_in_flight: int, send_timeout: float) -> None:
        self._max_in_flight = max_in_flight
        self._send_timeout = send_timeout
        self._cv = threading.Condition()
        self._seq = 0
        #: receipt id -> (seq, destination, headers, body), in sending order.
        self._pending: OrderedDict[str, tuple[int, str, dict[str, str], bytes]] = OrderedDict()
        self._error: MqkitError | None = None
        self._closed = False
        self._link = Link(
            settings, "producer", on_up=self._resend, on_receipt=self._confirmed,
            on_error=self._failed,
        )
        try:
            self._link.start()
        except BaseException:
            self._link.close()
            raise

    def send(self, message: OutgoingMessage) -> None:
        destination = topic_destination(message.topic)
        headers = frames.send_headers(message)
        deadline = time.monotonic() + self._send_timeout
        while True:
            self._wait_for_room(deadline)
            # Registering the message and writing it happen under the send lock, which a new
            # connection holds while _resend sends the backlog: so a message is written either
            # by _resend or here, never by both (a copy of it would be stored twice), and the
            # wire order is the order of registration.
            with self._link.send_lock:
                with self._cv:
                    if self._closed:
                        raise ClosedError("producer is closed")
                    self._raise_error()
                    if len(self._pending) >= self._max_in_flight:
                        continue  # another sender took the room meanwhile
                    self._seq += 1
                    rid = f"s{id(self):x}-{self._seq}"
                    self._pending[rid] = (self._seq, destination, headers, message.body)
                conn, _ = self._link.current()
                if conn is None:
                    return  # reconnecting: _resend sends it once the new connection is up
                try:
                    conn.send(destination, message.body, headers=dict(headers, receipt=rid))
                except Exception as exc:  # the connection broke under us; the resend covers it
                    log.debug("send failed, will resend after reconnecting: %s", exc)
                return

    def _wait_for_room(self, deadline: float) -> None:
        """Block (without the send lock, which the resend needs) while max_in_flight are
        unconfirmed."""
        with self._cv:
            if self._closed:
                raise ClosedError("producer is closed")
            self._raise_error()
            if len(self._pending) < self._max_in_flight:
                return
            if not self._cv.wait_for(
                lambda: len(self._pending) < self._max_in_flight or self._error is not None,
                max(0.0, deadline - time.monotonic()),
            ):
                raise DeliveryTimeout(
                    f"{len(self._pending)} messages to ActiveMQ at "
                    f"{self._link.settings.where()} are still unconfirmed after "
                    f"{self._send_timeout:g} s (send_timeout); is the broker up?"
                )
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _resend(self, conn: Any, gen: int) -> None:
        """On a new connection (send lock held, so no send() writes meanwhile): send what was
        never confirmed, in order."""
        with self._cv:
            backlog = list(self._pending.items())
        if backlog:
            log.warning("producer: resending %d unconfirmed message(s)", len(backlog))
        for rid, (_, destination, headers, body) in backlog:
            conn.send(destination, body, headers=dict(headers, receipt=rid))

    def _confirmed(self, gen: int, rid: str) -> None:
        with self._cv:
            if self._pending.pop(rid, None) is not None:
                self._cv.notify_all()

    def _failed(self, gen: int, rid: str | None, text: str) -> None:
        with self._cv:
            if rid is not None and self._pending.pop(rid, None) is not None:
                self._error = MqkitError(
                    f"ActiveMQ at {self._link.settings.where()} rejected a message: {text}"
                )
                self._cv.notify_all()

    def flush(self, timeout: float | None) -> None:
        with self._cv:
            target = self._seq

            def done() -> bool:
                if self._error is not None:
                    return True
                first = next(iter(self._pending.values()), None)
                return first is None or first[0] > target

            finished = self._cv.wait_for(done, timeout)
            self._raise_error()
            if not finished:
                left = sum(1 for v in self._pending.values() if v[0] <= target)
                raise DeliveryTimeout(
                    f"{left} message(s) not yet confirmed by ActiveMQ at "
                    f"{self._link.settings.where()} after {timeout} s"
                )

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
        try:
            self.flush(self._send_timeout)
        finally:
            with self._cv:
                self._closed = True
            self._link.close()


class _Handle:
    """What a consumer needs to settle one delivery (``Delivery.handle``)."""

    __slots__ = ("ack_id", "destination", "gen")

    def __init__(self, gen: int, ack_id: str, destination: str) -> None:
        self.gen = gen
        self.ack_id = ack_id
        self.destination = destination


_WAKE = object()


class ActiveMQConsumer:
    """One connection; one ``client-individual`` subscription per topic, all feeding a local
    queue that ``receive`` reads (so a blocking receive ends as soon as ``close`` runs)."""

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        group: str,
        *,
        prefetch: int,
        confirm_acks: bool,
        ack_timeout: float,
        scheduler: bool,
        dlq: bool,
    ) -> None:
        self._topics = tuple(topics)
        self._group = group
        self._prefetch = prefetch
        self._confirm_acks = confirm_acks
        self._ack_timeout = ack_timeout
        self._scheduler = scheduler
        self._dlq = dlq
        self._subs = {f"s{i}": topic for i, topic in enumerate(self._topics)}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._link = Link(
            settings, f"consumer of group {group!r}", on_message=self._on_message,
            on_up=self._subscribe, on_down=self._on_down,
        )
        try:
            self._link.start()
        except BaseException:
            self._link.close()
            raise

    def _subscribe(self, conn: Any, gen: int) -> None:
        """Subscribe every topic, waiting for each receipt: afterwards the group's queues exist."""
        rids = []
        for sub_id, topic in self._subs.items():
            rid = self._link.expect(gen)
            rids.append((rid, topic))
            conn.subscribe(
                group_destination(topic, self._group), id=sub_id, ack="client-individual",
                headers={"activemq.prefetchSize": str(self._prefetch), "receipt": rid},
            )
        for rid, topic in rids:
            error = self._link.wait(rid, self._link.settings.connect_timeout + 5)
            if error is not None:
                raise BrokerUnavailable(
                    f"ActiveMQ at {self._link.settings.where()}: subscribing group "
                    f"{self._group!r} to {topic!r} failed: {error}"
                )

    def _on_message(self, gen: int, frame: Any) -> None:
        headers: dict[str, str] = frame.headers
        topic = self._subs.get(headers.get("subscription", ""))
        ack_id = headers.get("ack")
        if topic is None or ack_id is None:
            log.warning("consumer: MESSAGE for an unknown subscription ignored: %r", headers)
            return
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        delivery = Delivery(
            topic=topic,
            body=body,
            key=headers.get(frames.KEY),
            headers=frames.user_headers(headers),
            id=headers.get(frames.ID) or headers.get("message-id", ""),
            timestamp=frames.timestamp_of(headers),
            attempt=frames.attempt_of(headers),
            handle=_Handle(gen, ack_id, headers.get("destination", "")),
        )
        self._queue.put(delivery)

    def _on_down(self, gen: int) -> None:
        # What the lost connection had dispatched comes again on the next one.
        dropped = 0
        kept: list[Any] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Delivery) and item.handle.gen == gen:
                dropped += 1
            else:
                kept.append(item)
        for item in kept:
            self._queue.put(item)
        if dropped:
            log.info("consumer: %d prefetched message(s) will be redelivered", dropped)

    def receive(self, timeout: float | None) -> Delivery | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    item = self._queue.get_nowait()  # receive(timeout=0) still takes what is here
                else:
                    item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if item is _WAKE:
                self._queue.put(_WAKE)  # wake every other blocked receiver too
                return None
            conn, gen = self._link.current()
            if conn is None or item.handle.gen != gen:
                continue  # from a lost connection: the broker delivers it again
            return item  # type: ignore[no-any-return]

    def _settle_frame(self, handle: _Handle, what: str, send: Any) -> None:
        """Send one frame on the delivery's connection and (optionally) wait for its receipt."""
        with self._link.send_lock:
            conn, gen = self._link.current()
            if self._closed:
                raise ClosedError("consumer is closed; the message will be delivered again")
            if conn is None or gen != handle.gen:
                raise BrokerUnavailable(
                    f"the connection to ActiveMQ at {self._link.settings.where()} was lost "
                    f"since this message was received; it cannot be {what}ed and will be "
                    "delivered again"
                )
            rid = self._link.expect(gen) if self._confirm_acks or what == "nack" else None
            try:
                send(conn, rid)
            except Exception as exc:
                if rid is not None:
                    self._link.forget(rid)
                raise BrokerUnavailable(
                    f"ActiveMQ at {self._link.settings.where()}: sending the {what} failed "
                    f"({exc}); the message will be delivered again"
                ) from None
        if rid is not None:
            error = self._link.wait(rid, self._ack_timeout)
            if error is not None:
                raise BrokerUnavailable(
                    f"ActiveMQ at {self._link.settings.where()} did not confirm the {what}: "
                    f"{error}; the message may be delivered again"
                )

    def ack(self, delivery: Delivery) -> None:
        handle: _Handle = delivery.handle

        def send(conn: Any, rid: str | None) -> None:
            conn.ack(handle.ack_id, receipt=rid)

        self._settle_frame(handle, "ack", send)

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        handle: _Handle = delivery.handle
        if not requeue:
            if self._dlq:
                self._settle_frame(
                    handle, "nack", lambda conn, rid: conn.nack(handle.ack_id, receipt=rid)
                )
            else:
                self.ack(delivery)
            return
        delay_ms = int(delay * 1000) if self._scheduler else 0
        copy = OutgoingMessage(
            topic=delivery.topic,
            body=delivery.body,
            key=delivery.key,
            headers=delivery.headers,
            id=delivery.id,
            timestamp=delivery.timestamp,
        )
        headers = frames.send_headers(copy, attempt=delivery.attempt + 1, delay_ms=delay_ms)

        def republish(conn: Any, rid: str | None) -> None:
            conn.send(handle.destination, delivery.body, headers=dict(headers, receipt=rid))

        try:
            self._settle_frame(handle, "nack", republish)
        except BrokerUnavailable:
            # Not acked either, so the broker gives it back anyway (attempt + 1): what nack asks.
            log.info("consumer: nack of %s during a reconnect; the broker redelivers it",
                     delivery.id)
            return
        try:
            self.ack(delivery)
        except BrokerUnavailable as exc:
            log.warning("consumer: message %s was requeued but acking the original failed (%s); "
                        "it may be delivered twice", delivery.id, exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_WAKE)
        # DISCONNECT: the broker gives every unacked message back to the group.
        self._link.close()


@dataclass(frozen=True)
class Config:
    """Everything a ``stomp://`` URL and its options say (read by :func:`read_config`)."""

    settings: Settings
    scheduler: bool
    prefetch: int
    confirm_acks: bool
    ack_timeout: float
    max_in_flight: int
    send_timeout: float
    dlq: bool


def read_config(url: BrokerURL, opts: Options) -> Config:
    """Check ``url`` and read every backend option (the caller calls ``opts.done()``)."""
    if url.scheme not in DEFAULT_PORTS:
        raise ConfigError(f"{url}: the ActiveMQ adapter speaks stomp:// and stomp+ssl://")
    if not url.hosts:
        raise ConfigError(f"{url}: no host; write e.g. stomp://127.0.0.1:61613")
    if url.path not in ("", "/"):
        raise ConfigError(f"{url}: ActiveMQ has no virtual hosts; remove the path {url.path!r}")
    hosts = tuple((host, port or DEFAULT_PORTS[url.scheme]) for host, port in url.hosts)
    ssl_options: dict[str, Any] | None = None
    ca_certs = opts.str("ca_certs", "")
    certfile = opts.str("certfile", "")
    keyfile = opts.str("keyfile", "")
    verify = opts.bool("verify", True)
    for name, path in (("ca_certs", ca_certs), ("certfile", certfile), ("keyfile", keyfile)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{url}: {name}={path!r} is not a readable file")
    if url.scheme == "stomp+ssl":
        ssl_options = {
            "ca_certs": ca_certs or None,
            "cert_file": certfile or None,
            "key_file": keyfile or None,
            "verify": verify,
        }
    elif ca_certs or certfile or keyfile:
        raise ConfigError(f"{url}: TLS options need a stomp+ssl:// URL")
    return Config(
        settings=Settings(
            hosts=hosts,
            username=url.username,
            password=url.password,
            connect_timeout=opts.float("connect_timeout", 5.0, minimum=0.1),
            heartbeat=opts.float("heartbeat", 10.0),
            reconnect_max_delay=opts.float("reconnect_max_delay", 5.0, minimum=0.1),
            ssl=ssl_options,
        ),
        scheduler=opts.bool("scheduler", False),
        prefetch=opts.int("prefetch", 100, minimum=1),
        confirm_acks=opts.bool("confirm_acks", True),
        ack_timeout=opts.float("ack_timeout", 30.0, minimum=0.1),
        max_in_flight=opts.int("max_in_flight", 1000, minimum=1),
        send_timeout=opts.float("send_timeout", 60.0, minimum=0.1),
        dlq=opts.bool("dlq", False),
    )


class ActiveMQBackend:
    def __init__(self, url: BrokerURL, opts: Options) -> None:
        config = read_config(url, opts)
        opts.done()
        self.settings = config.settings
        self._scheduler = config.scheduler
        self._prefetch = config.prefetch
        self._confirm_acks = config.confirm_acks
        self._ack_timeout = config.ack_timeout
        self._max_in_flight = config.max_in_flight
        self._send_timeout = config.send_timeout
        self._dlq = config.dlq
        self.features = Features(
            key_order_on_nack=False,
            delayed_redelivery=self._scheduler,
            persistent=True,
            max_body_size=64 << 20,
        )
        self._closed = False
        # Fail now, with a clear error, if the broker is unreachable or refuses the login.
        probe = Link(self.settings, "connection check")
        try:
            probe.start()
        finally:
            probe.close(timeout=1.0)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("broker is closed")

    def producer(self, options: Mapping[str, Any]) -> ActiveMQProducer:
        self._check_open()
        opts = Options("activemq producer", options)
        max_in_flight = opts.int("max_in_flight", self._max_in_flight, minimum=1)
        send_timeout = opts.float("send_timeout", self._send_timeout, minimum=0.1)
        opts.done()
        return ActiveMQProducer(
            self.settings, max_in_flight=max_in_flight, send_timeout=send_timeout
        )

    def consumer(
        self, topics: Sequence[str], group: str, options: Mapping[str, Any]
    ) -> ActiveMQConsumer:
        self._check_open()
        opts = Options("activemq consumer", options)
        prefetch = opts.int("prefetch", self._prefetch, minimum=1)
        confirm_acks = opts.bool("confirm_acks", self._confirm_acks)
        opts.done()
        return ActiveMQConsumer(
            self.settings,
            topics,
            group,
            prefetch=prefetch,
            confirm_acks=confirm_acks,
            ack_timeout=self._ack_timeout,
            scheduler=self._scheduler,
            dlq=self._dlq,
        )

    def close(self) -> None:
        self._closed = True


def open_backend(url: BrokerURL, options: Mapping[str, Any]) -> ActiveMQBackend:
    """Entry point for ``stomp://[user:password@]host[:port][,host:port…][?option=…]`` and
    ``stomp+ssl://…``."""
    return ActiveMQBackend(url, Options(f"{url.scheme}://{url.host}", options))
