"""RabbitMQ (AMQP 0-9-1) backend for mqkit, on pika.

``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS). In short: topic → durable
topic exchange; group → durable quorum queues bound to it (one shared, ``partitions`` keyed);
persistent messages, publisher confirms, manual acks, bounded prefetch; ``attempt`` from the
quorum queues' ``x-delivery-count``. The mapping, options and limits: ``docs/rabbitmq.md``.
"""

from .backend import Backend

__all__ = ["Backend"]
