"""ActiveMQ Classic adapter for mqkit: ``stomp://`` and ``stomp+ssl://`` URLs, over stomp.py."""

from mqkit_activemq.backend import (
    ActiveMQBackend,
    ActiveMQConsumer,
    ActiveMQProducer,
    group_destination,
    open_backend,
    topic_destination,
)

__all__ = [
    "ActiveMQBackend",
    "ActiveMQConsumer",
    "ActiveMQProducer",
    "group_destination",
    "open_backend",
    "topic_destination",
]
