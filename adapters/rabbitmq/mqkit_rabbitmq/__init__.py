"""RabbitMQ (AMQP 0-9-1) backend for mqkit, on pika.

``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS). The mapping, options and
limits are described in ``docs/rabbitmq.md``; in short: topic → durable topic exchange; group
→ durable quorum queues bound to it (one shared, ``partitions`` keyed); persistent messages,
publisher confirms, manual acks, bounded prefetch; ``attempt`` from the quorum queues'
``x-delivery-count``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from mqkit.config import BrokerURL
from mqkit.errors import ClosedError, ConfigError
from mqkit.options import Options
from mqkit.spi import Features

from ._common import SLOTS, Settings, log, open_blocking, read_settings
from .consumer import RabbitConsumer
from .producer import RabbitProducer

__all__ = ["RabbitBackend", "RabbitConsumer", "RabbitProducer", "open_backend"]
__version__ = "0.1.0"


class RabbitBackend:
    """Opens one connection per producer and per consumer; checks the broker once up front."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.features = Features(
            key_order_on_nack=True,
            delayed_redelivery=False,
            persistent=True,
            max_body_size=128 << 20,  # RabbitMQ's default max_message_size
        )
        self._closed = False
        self._lock = threading.Lock()
        self._children: weakref.WeakSet[RabbitProducer | RabbitConsumer] = weakref.WeakSet()

    def producer(self, options: Mapping[str, Any]) -> RabbitProducer:
        self._check_open()
        opts = Options("RabbitMQ producer", options)
        max_buffer = opts.int("max_buffer", 10_000, minimum=1)
        max_inflight = opts.int("max_inflight", 1_000, minimum=1)
        opts.done()
        producer = RabbitProducer(self.settings, max_buffer=max_buffer, max_inflight=max_inflight)
        with self._lock:
            self._children.add(producer)
        return producer

    def consumer(
        self, topics: Sequence[str], group: str, options: Mapping[str, Any]
    ) -> RabbitConsumer:
        self._check_open()
        opts = Options("RabbitMQ consumer", options)
        prefetch = opts.int("prefetch", self.settings.prefetch, minimum=1)
        partitions = opts.int("partitions", self.settings.partitions, minimum=1)
        opts.done()
        if partitions > SLOTS:
            raise ConfigError(f"RabbitMQ consumer: partitions={partitions} must be at most {SLOTS}")
        consumer = RabbitConsumer(
            self.settings, topics, group, prefetch=prefetch, partitions=partitions
        )
        with self._lock:
            self._children.add(consumer)
        return consumer

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("broker is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            children = list(self._children)
        for child in children:
            try:
                child.close()
            except Exception as exc:  # the façade already closed them; this is a safety net
                log.debug("closing %r failed: %s", child, exc)


def open_backend(url: BrokerURL, options: Mapping[str, Any]) -> RabbitBackend:
    """Entry point for ``amqp://`` and ``amqps://`` URLs; fails fast if the broker is unusable."""
    settings, opts = read_settings(url, options)
    opts.done()
    conn, _ = open_blocking(settings)
    try:
        conn.close()
    except Exception:
        log.debug("closing the probe connection failed", exc_info=True)
    return RabbitBackend(settings)
