"""Kafka: ``adapters/kafka/ci/broker start`` sets the URL (a Tansu broker on loopback); with
Docker and no URL, testcontainers starts Kafka (KRaft, single node)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

ENV = "MQKIT_TEST_KAFKA_URL"
#: testcontainers' KafkaContainer drives the start scripts of Confluent's image of Apache Kafka.
IMAGE = "confluentinc/cp-kafka:7.6.0"


@contextlib.contextmanager
def container() -> Iterator[str]:
    import importlib

    try:
        module: Any = importlib.import_module("testcontainers.community.kafka")
    except ImportError:  # testcontainers before the 'community' package layout
        module = importlib.import_module("testcontainers.kafka")
    kafka = module.KafkaContainer(IMAGE).with_kraft()
    # A 1 MiB body plus headers is above Kafka's default 1 MiB record limit.
    kafka.with_env("KAFKA_MESSAGE_MAX_BYTES", str(16 << 20))
    with kafka:
        yield f"kafka://{kafka.get_bootstrap_server()}"
