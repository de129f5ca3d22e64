"""Fixtures for the Kafka adapter's own tests: the CI broker, and a restartable durable one."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers.kafka import ENV

ROOT = Path(__file__).resolve().parents[2]
BROKER_SCRIPT = ROOT / "adapters" / "kafka" / "ci" / "broker"
PROBE = ROOT / "adapters" / "kafka" / "ci" / "probe.py"


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(what: str) -> str:
    out = subprocess.run(
        ["bash", str(BROKER_SCRIPT), what], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


class DurableTansu:
    """A second Tansu whose storage (s3:// on a local moto S3 server) survives its restarts."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tansu = _tool("bin")
        self.moto = _tool("s3bin")
        self.s3_port = free_port()
        self.port = free_port()
        self.url = f"kafka://127.0.0.1:{self.port}"
        self._s3: subprocess.Popen[bytes] | None = None
        self._broker: subprocess.Popen[bytes] | None = None

    def start_s3(self) -> None:
        log = (self.workdir / "moto.log").open("ab")
        self._s3 = subprocess.Popen(
            [self.moto, "-H", "127.0.0.1", "-p", str(self.s3_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{self.s3_port}/tansu", method="PUT"
                )
                urllib.request.urlopen(request, timeout=2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the local S3 server did not start") from None
                time.sleep(0.2)

    def start(self) -> None:
        env = {
            **os.environ,
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.s3_port}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        listener = f"tcp://127.0.0.1:{self.port}"
        log = (self.workdir / "tansu.log").open("ab")
        self._broker = subprocess.Popen(
            [
                self.tansu,
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "s3://tansu/",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        subprocess.run(["python3", str(PROBE), "127.0.0.1", str(self.port), "30"], check=True)

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.terminate()
            try:
                self._broker.wait(10)
            except subprocess.TimeoutExpired:
                self._broker.kill()
                self._broker.wait()
            self._broker = None

    def close(self) -> None:
        self.stop()
        if self._s3 is not None:
            self._s3.terminate()
            self._s3.wait(10)


@pytest.fixture
def durable_tansu(kafka_url: str, tmp_path: Path) -> Iterator[DurableTansu]:
    broker = DurableTansu(tmp_path)
    try:
        broker.start_s3()
        broker.start()
        yield broker
    finally:
        broker.close()
