"""Fixtures for the RabbitMQ adapter's own tests: the shared broker URL, and a private node that
fault tests may stop, kill and restart (never the broker other tests use)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

import mqkit
from tests.chaos import free_ports

NODE_SCRIPT = Path(__file__).resolve().parents[2] / "adapters" / "rabbitmq" / "ci" / "node"
ENV = "MQKIT_TEST_RABBITMQ_URL"


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    url = os.environ.get(ENV)
    if not url:
        if os.environ.get("CI"):
            raise RuntimeError(f"{ENV} is not set in CI: run adapters/rabbitmq/ci/broker start")
        pytest.skip(f"set {ENV} (adapters/rabbitmq/ci/broker start prints it)")
    return url


@pytest.fixture
def names() -> tuple[str, str]:
    """A fresh topic and group."""
    tag = uuid.uuid4().hex[:10]
    return f"rt-{tag}", f"rg-{tag}"


@pytest.fixture
def clean(rabbit_url: str, names: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """Topic and group whose queues are deleted after the test (the broker is shared): the
    group's, and those of the groups named after it with "-b" or "-p"."""
    yield names
    topic, group = names
    for suffix in ("", "-b", "-p"):
        delete_group(rabbit_url, topic, group + suffix, 64)


def receive_each(
    consumers: Sequence[mqkit.Consumer], count: int, deadline: float = 30
) -> list[tuple[int, mqkit.Message]]:
    """Receive and ack from each consumer in turn until ``count`` messages came (or
    ``deadline`` seconds passed): (index of the consumer, message) for each."""
    out: list[tuple[int, mqkit.Message]] = []
    end = time.monotonic() + deadline
    while len(out) < count and time.monotonic() < end:
        for index, consumer in enumerate(consumers):
            message = consumer.receive(timeout=0.2)
            if message is not None:
                out.append((index, message))
                message.ack()
    return out


def receive_all(
    consumers: Sequence[mqkit.Consumer], count: int, deadline: float = 30
) -> list[mqkit.Message]:
    """The messages of :func:`receive_each`."""
    return [message for _, message in receive_each(consumers, count, deadline)]


@dataclass
class Node:
    """A RabbitMQ node of our own on free ports, with its state in a temp directory."""

    directory: Path
    port: int
    name: str

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _run(self, *args: str) -> None:
        subprocess.run(["bash", str(NODE_SCRIPT), *args], check=True, timeout=120)

    def start(self) -> None:
        self._run("start", str(self.directory), str(self.port), self.name)

    def stop(self) -> None:
        self._run("stop", str(self.directory))

    def kill(self) -> None:
        self._run("kill", str(self.directory))

    def plugins(self, action: str, plugin: str) -> None:
        """``rabbitmq-plugins enable|disable plugin`` on this node (for tests of a missing
        plugin)."""
        env = {
            **os.environ,
            "HOME": str(self.directory),
            "RABBITMQ_NODENAME": f"{self.name}@localhost",
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        subprocess.run(
            ["/usr/lib/rabbitmq/bin/rabbitmq-plugins", "-q", action, plugin],
            check=True,
            timeout=120,
            env=env,
            stdout=subprocess.DEVNULL,
        )


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory, rabbit_url: str) -> Iterator[Node]:
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        pytest.fail("fault tests need Debian's rabbitmq-server (adapters/rabbitmq/ci/broker start)")
    port = free_ports([0, 20000])
    node = Node(tmp_path_factory.mktemp("rabbitmq-node"), port, f"mqkit-test-{os.getpid()}")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def delete_group(url: str, topic: str, group: str, partitions: int) -> None:
    """Remove a test's queues and exchange, so test runs leave the shared broker clean."""
    from mqkit_rabbitmq.wire import group_base, partition_queue

    base = group_base(topic, group)
    conn = pika.BlockingConnection(pika.URLParameters(url.split("?")[0]))
    try:
        channel = conn.channel()
        for queue in [base, *(partition_queue(base, j) for j in range(partitions))]:
            channel.queue_delete(queue)
        channel.exchange_delete(topic)
    finally:
        conn.close()
