"""RabbitMQ for the conformance suite: ``MQKIT_TEST_RABBITMQ_URL`` (set by
``adapters/rabbitmq/ci/broker start``), or a container where Docker is available."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

ENV = "MQKIT_TEST_RABBITMQ_URL"


@contextlib.contextmanager
def container() -> Iterator[str]:
    """Start ``rabbitmq:3-management`` with testcontainers (``mqkit-rabbitmq[test]``)."""
    import importlib

    module: Any = importlib.import_module("testcontainers.rabbitmq")
    with module.RabbitMqContainer("rabbitmq:3-management") as rabbit:
        host = rabbit.get_container_host_ip()
        port = rabbit.get_exposed_port(5672)
        yield f"amqp://guest:guest@{host}:{port}/?queue_expires=600"
