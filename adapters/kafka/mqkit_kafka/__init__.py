"""mqkit adapter for Kafka (and Kafka-protocol brokers) on kafka-python.

URL: ``kafka://host:port[,host:port…]`` (``kafka://user:password@host:port`` for SASL). See
``docs/kafka.md`` for the mapping of mqkit concepts onto Kafka and every option.
"""

from .backend import Backend

__all__ = ["Backend"]
