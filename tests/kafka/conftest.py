"""Fixtures for the Kafka adapter's own tests: the CI broker, and a second one to restart."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqkit.testing.util import closed_port as free_port
from tests.backends import env_var

ENV = env_var("kafka")

ROOT = Path(__file__).resolve().parents[2]
BROKER_SCRIPT = ROOT / "adapters" / "kafka" / "ci" / "broker"


@pytest.fixture(scope="session")
def kafka_url() -> str:
    url = os.environ.get(ENV, "")
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{ENV} is not set in CI: adapters/kafka/ci/broker start must run first")
        pytest.skip(f"set {ENV} (adapters/kafka/ci/broker start) to run the Kafka tests")
    return url


@pytest.fixture(scope="session")
def bootstrap(kafka_url: str) -> str:
    return kafka_url.split("://", 1)[1].split("?", 1)[0]


@pytest.fixture
def admin(bootstrap: str) -> Iterator[Any]:
    from kafka import KafkaAdminClient  # type: ignore[import-untyped]

    client = KafkaAdminClient(bootstrap_servers=bootstrap)
    yield client
    client.close()


def committed(admin: Any, group: str) -> dict[int, int]:
    """The group's committed offsets per partition, read through the admin API."""
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


class RestartableKafka:
    """A second Apache Kafka of the tests' own, to stop and start: ``adapters/kafka/ci/broker`` with
    a state directory and first port of its own. Its data (topics, records, committed offsets)
    survives ``stop``; ``start`` brings it back on the same port, so clients keep their URL."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self._env = {
            **os.environ,
            "MQKIT_KAFKA_STATE": str(state),
            "MQKIT_KAFKA_PORT": str(free_port()),
            # The plaintext listener is all these tests need: no secured listeners to set up.
            "MQKIT_KAFKA_SECURE": "0",
        }
        self.url = ""

    def _script(self, action: str) -> str:
        # The script's progress goes to stderr (captured by pytest, shown on failure).
        done = subprocess.run(
            ["bash", str(BROKER_SCRIPT), action],
            env=self._env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            timeout=180,
        )
        return done.stdout

    def start(self) -> None:
        """Start it (or find it running) and wait until it answers Kafka requests."""
        prefix = "export MQKIT_TEST_KAFKA_URL="
        lines = self._script("start").splitlines()
        url = next(line.removeprefix(prefix) for line in lines if line.startswith(prefix))
        if self.url and url != self.url:
            raise AssertionError(f"the restarted broker is at {url}, no longer at {self.url}")
        self.url = url

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, as a broker restart); the data stays."""
        self._script("stop")

    def close(self) -> None:
        self._script("reset")  # stops it and deletes its data


@pytest.fixture(scope="module")
def _restartable_kafka(
    kafka_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestartableKafka]:
    broker = RestartableKafka(tmp_path_factory.mktemp("restartable-kafka"))
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture
def restartable_kafka(_restartable_kafka: RestartableKafka) -> RestartableKafka:
    """One broker for the module (a JVM start is slow); running at the start of every test."""
    _restartable_kafka.start()
    return _restartable_kafka
