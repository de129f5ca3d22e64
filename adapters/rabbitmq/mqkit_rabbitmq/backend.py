"""The ``amqp://`` / ``amqps://`` backend: checks the broker once, then opens one connection per
producer and per consumer (each with its own I/O thread, reconnecting on its own)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import pika
import pika.exceptions

from mqkit.adapter import BackendBase, BrokerURL, Features
from mqkit.adapter import Settings as BaseSettings

from .connection import open_blocking
from .consumer import Consumer
from .producer import Producer
from .settings import MAX_PARTITIONS, Endpoint, Settings
from .wire import group_base, partition_queue

log = logging.getLogger("mqkit.rabbitmq")


class Backend(BackendBase[Settings]):
    """RabbitMQ (AMQP 0-9-1) through pika; ``mqkit.connect`` fails fast if the broker is
    unusable (a probe connection), not at the first send."""

    settings_type: ClassVar[type[BaseSettings]] = Settings
    features = Features(
        key_order_on_nack=True,
        delayed_redelivery=False,
        persistent=True,
        max_body_size=128 << 20,  # RabbitMQ's default max_message_size
        # A request's reply inbox: one partition, and its queues (and so its hash exchange)
        # go 30 s after its consumer does.
        throwaway_group_options={"queue_expires": 30.0, "partitions": 1},
        # Retry relays and dead-letter keepers need no per-key parallelism: one partition
        # queue each (plus the member-count queue), so helpers add 2 queues per group, not 1+P.
        helper_group_options={"partitions": 1},
    )

    def __init__(self, url: BrokerURL, settings: Settings) -> None:
        super().__init__(url, settings)
        self.endpoint = Endpoint.of(url, settings)
        conn, _ = open_blocking(self.endpoint)
        try:
            conn.close()
        except Exception:  # the probe answered; how it closes does not matter
            log.debug("closing the probe connection failed", exc_info=True)

    def ping(self, timeout: float) -> None:
        """A connection handshake (login included), closed at once: what connect() probes."""
        conn, _ = open_blocking(self.endpoint)
        try:
            conn.close()
        except Exception:
            log.debug("closing the ping connection failed", exc_info=True)

    def depth(self, group: str, topics: Sequence[str]) -> int | None:
        """Messages ready in the group's partition queues, by passive declarations on one
        short connection. RabbitMQ counts only messages not yet delivered: those a member
        holds unacked are not in the figure."""
        conn, _ = open_blocking(self.endpoint)
        try:
            total = 0
            for topic in topics:
                base = group_base(topic, group)
                for index in range(MAX_PARTITIONS):
                    count = _ready(conn, partition_queue(base, index))
                    if count < 0:  # past the group's last partition
                        break
                    total += count
            return total
        finally:
            try:
                conn.close()
            except Exception:
                log.debug("closing the depth connection failed", exc_info=True)

    def open_producer(self, settings: Settings) -> Producer:
        return Producer(self.endpoint, settings)

    def open_consumer(self, topics: tuple[str, ...], group: str, settings: Settings) -> Consumer:
        return Consumer(self.endpoint, settings, topics, group)


def _ready(conn: pika.BlockingConnection, queue: str) -> int:
    """The ready messages of ``queue``, or -1 if it does not exist (the broker closes the
    channel of a passive declaration of a missing queue: each call has its own)."""
    channel = conn.channel()
    try:
        ok = channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return -1
        raise
    channel.close()
    return int(ok.method.message_count or 0)


#: The ``mqkit.adapters`` entry point of ``amqp://`` and ``amqps://``.
open_backend = Backend.open
