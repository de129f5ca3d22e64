"""mqkit adapter for Kafka (and Kafka-protocol brokers) on kafka-python.

URL: ``kafka://host:port[,host:port…]`` (``kafka://user:password@host:port`` for SASL). See
``docs/kafka.md`` for the mapping of mqkit concepts onto Kafka and every option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mqkit.config import BrokerURL
from mqkit_kafka.backend import KafkaBackend, parse_settings

__all__ = ["KafkaBackend", "open_backend"]


def open_backend(url: BrokerURL, options: Mapping[str, Any]) -> KafkaBackend:
    """Entry point for ``kafka://``: checks the settings, then reaches the cluster."""
    settings, opts = parse_settings(url, options)
    opts.done()
    return KafkaBackend(settings)
