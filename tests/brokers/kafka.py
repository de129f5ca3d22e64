"""Kafka: ``adapters/kafka/ci/broker start`` sets the URL (a Tansu broker on loopback); with
Docker and no URL, testcontainers starts Apache Kafka (KRaft, single node)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

ENV = "MQKIT_TEST_KAFKA_URL"
IMAGE = "apache/kafka:3.9.1"


@contextlib.contextmanager
def container() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found,unused-ignore]

    kafka = KafkaContainer(IMAGE).with_kraft()
    # A 1 MiB body plus headers exceeds Kafka's default 1 MiB record limit.
    kafka.with_env("KAFKA_MESSAGE_MAX_BYTES", str(16 << 20))
    kafka.with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
    with kafka:
        yield f"kafka://{kafka.get_bootstrap_server()}"
