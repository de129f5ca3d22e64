"""Kafka: ``adapters/kafka/ci/broker start`` sets the URL (Apache Kafka 4.1.1 on loopback, from
the release's jars on Maven Central); with Docker and no URL, the official ``apache/kafka``
image runs instead (KRaft, one node acting as broker and controller)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

ENV = "MQKIT_TEST_KAFKA_URL"
#: The version ``adapters/kafka/ci/broker`` runs.
IMAGE = "apache/kafka:4.1.1"


@contextlib.contextmanager
def container() -> Iterator[str]:
    """Apache Kafka from its official image (needs Docker).

    testcontainers' ``KafkaContainer`` drives the start scripts of Confluent's image, not of
    this one, so this is a plain container configured through the image's ``KAFKA_*``
    variables (as in ``compose.yaml``). Clients connect to the address the broker advertises,
    which must be known before it starts: the broker listens on a free host port, published
    under the same number."""
    from testcontainers.core.container import DockerContainer  # type: ignore[import-not-found,unused-ignore]
    from testcontainers.core.waiting_utils import wait_for_logs  # type: ignore[import-not-found,unused-ignore]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    image = DockerContainer(IMAGE).with_bind_ports(port, port)
    for name, value in {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        # A 1 MiB body plus headers is above Kafka's default 1 MiB record limit.
        "KAFKA_MESSAGE_MAX_BYTES": str(16 << 20),
    }.items():
        image = image.with_env(name, value)
    with image as kafka:
        wait_for_logs(kafka, r"Kafka Server started", timeout=120)
        yield f"kafka://127.0.0.1:{port}"
