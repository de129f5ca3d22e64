"""The consumer: ``client-individual`` subscriptions to the group's queues (or to an existing
destination), acks confirmed by receipts, nack as a copy sent to a queue only the group reads."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from mqkit.adapter import ConsumerBase, Deadline, Delivery, OutgoingMessage, ReceiveQueue
from mqkit.errors import BrokerUnavailable, ClosedError, ConfigError, PermissionDenied
from mqkit_activemq import wire
from mqkit_activemq.link import Link, refusal
from mqkit_activemq.settings import Endpoint, Settings

log = logging.getLogger("mqkit.activemq")


class _Handle:
    """What a consumer needs to settle one delivery (``Delivery.handle``)."""

    __slots__ = ("ack_id", "gen", "requeue_to")

    def __init__(self, gen: int, ack_id: str, requeue_to: str) -> None:
        self.gen = gen
        self.ack_id = ack_id
        #: Where a nacked copy goes: a destination only this group reads.
        self.requeue_to = requeue_to


@dataclasses.dataclass(frozen=True)
class Subscription:
    """One SUBSCRIBE: what it reads, for which topic, and where its nacked copies go."""

    topic: str
    destination: str
    requeue_to: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def plan(
    topics: tuple[str, ...], group: str, settings: Settings
) -> tuple[list[Subscription], str | None]:
    """The subscriptions of a consumer, and the JMS client id its connection needs (a durable
    topic subscription is named by client id and subscription name).

    A copy made by ``nack`` must reach this group only: the group's queue is such a place, an
    existing queue too (its readers are the group), a topic is not (every subscriber would get
    it), so a topic subscription also reads a requeue queue of its own: durable for a durable
    subscription, a connection's temporary queue otherwise.
    """
    segment = wire.group_segment(group)
    dest = settings.destination
    if dest is not None:
        if not dest.startswith(("/queue/", "/topic/")) or dest in ("/queue/", "/topic/"):
            raise ConfigError(
                f"destination={dest!r}: write an existing ActiveMQ queue or topic as "
                "/queue/NAME or /topic/NAME"
            )
        if len(topics) != 1:
            raise ConfigError(
                f"destination={dest!r} names one existing destination: give one topic, not "
                f"{len(topics)}"
            )
    subs: list[Subscription] = []
    client_id = None
    for i, topic in enumerate(topics):
        source = dest or (
            wire.group_destination(topic, group)
            if settings.durable
            else wire.topic_destination(topic)
        )
        if source.startswith("/queue/"):
            subs.append(Subscription(topic, source, source))
            continue
        headers: dict[str, str] = {}
        if settings.durable:
            client_id = f"mqkit:{group}:{topic}"
            headers["activemq.subscriptionName"] = group
            requeue = f"/queue/mqkit.requeue.{segment}.{topic}"
        else:
            requeue = f"/temp-queue/mqkit.requeue.{i}"
        subs.append(Subscription(topic, source, requeue, headers))
        subs.append(Subscription(topic, requeue, requeue))
    return subs, client_id


class Consumer(ConsumerBase):
    """One connection; one ``client-individual`` subscription per topic. stomp.py's receiver
    thread buffers what the broker dispatched in a :class:`ReceiveQueue` that ``receive`` reads
    (so a blocking receive ends as soon as ``close`` runs)."""

    def __init__(
        self, endpoint: Endpoint, topics: tuple[str, ...], group: str, settings: Settings
    ) -> None:
        super().__init__()
        self._group = group
        self._prefetch = settings.prefetch
        self._confirm_acks = settings.confirm_acks
        self._ack_timeout = settings.ack_timeout
        self._scheduler = settings.scheduler
        self._dlq = settings.dlq
        subs, client_id = plan(topics, group, settings)
        self._subs = {f"s{i}": sub for i, sub in enumerate(subs)}
        if client_id is not None:
            endpoint = dataclasses.replace(endpoint, client_id=client_id)
        self._queue: ReceiveQueue[Delivery] = ReceiveQueue()
        self._link = Link(
            endpoint,
            f"consumer of group {group!r}",
            on_message=self._on_message,
            on_up=self._subscribe,
            on_down=self._on_down,
        )
        try:
            self._link.start()
        except BaseException:
            self._link.close()
            raise

    def _subscribe(self, conn: Any, gen: int) -> None:
        """Subscribe everything, waiting for each receipt: afterwards the group's queues (or
        durable subscriptions) exist."""
        rids = []
        for sub_id, sub in self._subs.items():
            rid = self._link.expect(gen)
            rids.append((rid, sub))
            conn.subscribe(
                sub.destination,
                id=sub_id,
                ack="client-individual",
                headers={
                    **sub.headers,
                    "activemq.prefetchSize": str(self._prefetch),
                    "receipt": rid,
                },
            )
        for rid, sub in rids:
            error = self._link.wait(rid, self._link.endpoint.connect_timeout + 5)
            if error is not None:
                text = (
                    f"ActiveMQ at {self._link.endpoint.where()}: subscribing group "
                    f"{self._group!r} of {sub.topic!r} to {sub.destination} failed: {error}"
                )
                if refusal(error) is PermissionDenied:
                    raise PermissionDenied(
                        f"{text} (the broker's authorization map does not let this user read "
                        "or create that destination)"
                    )
                raise BrokerUnavailable(text)

    def _on_message(self, gen: int, frame: Any) -> None:
        headers: dict[str, str] = frame.headers
        sub = self._subs.get(headers.get("subscription", ""))
        ack_id = headers.get("ack")
        if sub is None or ack_id is None:
            log.warning("consumer: MESSAGE for an unknown subscription ignored: %r", headers)
            return
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        handle = _Handle(gen, ack_id, sub.requeue_to)
        self._queue.put(wire.decode(sub.topic, body, headers, handle))

    def _on_down(self, gen: int) -> None:
        # What the lost connection had dispatched comes again on the next one.
        dropped = self._queue.take_where(lambda delivery: delivery.handle.gen == gen)
        if dropped:
            log.info("consumer: %d prefetched message(s) will be redelivered", len(dropped))

    def receive(self, timeout: float | None) -> Delivery | None:
        delivery = self._queue.get(timeout)
        if delivery is None:
            return None
        deadline: Deadline | None = None
        while True:
            conn, gen = self._link.current()
            if conn is not None and delivery.handle.gen == gen:
                return delivery
            # From a lost connection (a race with _on_down): the broker delivers it again.
            if deadline is None:
                deadline = Deadline(timeout)
            delivery = self._queue.get(deadline.remaining())
            if delivery is None:
                return None

    def _settle_frame(
        self, handle: _Handle, what: str, send: Callable[[Any, str | None], None]
    ) -> None:
        """Send one frame on the delivery's connection and (optionally) wait for its receipt."""
        with self._link.send_lock:
            conn, gen = self._link.current()
            if conn is None and self._link.closed:
                raise ClosedError("consumer is closed; the message will be delivered again")
            if conn is None or gen != handle.gen:
                raise BrokerUnavailable(
                    f"the connection to ActiveMQ at {self._link.endpoint.where()} was lost "
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
                    f"ActiveMQ at {self._link.endpoint.where()}: sending the {what} failed "
                    f"({exc}); the message will be delivered again"
                ) from None
        if rid is not None:
            error = self._link.wait(rid, self._ack_timeout)
            if error is not None:
                raise BrokerUnavailable(
                    f"ActiveMQ at {self._link.endpoint.where()} did not confirm the {what}: "
                    f"{error}; the message may be delivered again"
                )

    def ack(self, delivery: Delivery) -> None:
        handle: _Handle = delivery.handle

        def send(conn: Any, rid: str | None) -> None:
            conn.ack(handle.ack_id, receipt=rid)

        self._settle_frame(handle, "ack", send)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Every ``ack`` of ``deliveries``, waiting for one receipt: the broker handles a
        connection's frames in order, so the receipt of the last ACK follows the others."""
        handles: list[_Handle] = [delivery.handle for delivery in deliveries]
        if not handles:
            return
        last = handles[-1]
        if any(handle.gen != last.gen for handle in handles):
            for delivery in deliveries:  # from connections since lost: each says so itself
                self.ack(delivery)
            return

        def send(conn: Any, rid: str | None) -> None:
            for handle in handles[:-1]:
                conn.ack(handle.ack_id)
            conn.ack(last.ack_id, receipt=rid)

        self._settle_frame(last, "ack", send)

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
            content_type=delivery.content_type,
            content_encoding=delivery.content_encoding,
            correlation_id=delivery.correlation_id,
            reply_to=delivery.reply_to,
        )
        headers = wire.encode(copy, attempt=delivery.attempt + 1, delay_ms=delay_ms)

        def republish(conn: Any, rid: str | None) -> None:
            conn.send(handle.requeue_to, delivery.body, headers=dict(headers, receipt=rid))

        try:
            self._settle_frame(handle, "nack", republish)
        except BrokerUnavailable:
            # Not acked either, so the broker gives it back anyway (attempt + 1): what nack asks.
            log.info(
                "consumer: nack of %s during a reconnect; the broker redelivers it", delivery.id
            )
            return
        try:
            self.ack(delivery)
        except BrokerUnavailable as exc:
            log.warning(
                "consumer: message %s was requeued but acking the original failed (%s); "
                "it may be delivered twice",
                delivery.id,
                exc,
            )

    def _close(self) -> None:
        self._queue.close()
        # DISCONNECT: the broker gives every unacked message back to the group.
        self._link.close()
