"""Fixtures for the ActiveMQ adapter's own tests.

The fault tests stop, kill and restart a broker, so they start their OWN ActiveMQ instance
(separate state directory and port, login required) with the same ``adapters/activemq/ci/broker``
script CI uses, never the shared one in ``MQKIT_TEST_ACTIVEMQ_URL``. They run when that variable
is set (CI), i.e. wherever an ActiveMQ can be started, and are skipped otherwise.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqkit.testing.util import closed_port as free_port
from tests.backends import env_var

ENV = env_var("activemq")
SCRIPT = Path(__file__).resolve().parents[2] / "adapters" / "activemq" / "ci" / "broker"


class OwnBroker:
    """A private ActiveMQ (STOMP and STOMP over TLS, login required) that a test may stop, kill
    and restart."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port = free_port()
        self.ssl_port = free_port()
        self.user = "mqkit-test"
        self.password = secrets.token_hex(8)
        self.url = f"stomp://{self.user}:{self.password}@127.0.0.1:{self.port}"
        #: The broker's self-signed certificate, made by the broker script.
        self.certificate = state / "conf" / "broker-cert.pem"
        self.tls_url = f"stomp+ssl://{self.user}:{self.password}@127.0.0.1:{self.ssl_port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MQKIT_ACTIVEMQ_STATE": str(self.state),
            "MQKIT_ACTIVEMQ_STOMP_PORT": str(self.port),
            "MQKIT_ACTIVEMQ_OPENWIRE_PORT": "0",
            "MQKIT_ACTIVEMQ_SSL_PORT": str(self.ssl_port),
            "MQKIT_ACTIVEMQ_SECURE_PORT": "0",
            "MQKIT_ACTIVEMQ_USER": self.user,
            "MQKIT_ACTIVEMQ_PASSWORD": self.password,
            "MQKIT_ACTIVEMQ_HEAP": "256m",
        }

    def _run(self, action: str) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), action],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"broker {action} failed:\n{done.stderr}")
        return done.stdout

    def start(self) -> None:
        out = self._run("start")
        assert f"127.0.0.1:{self.port}" in out, out

    def stop(self) -> None:
        self._run("stop")

    def kill(self) -> None:
        """SIGKILL, as in a crash; ``start`` afterwards recovers from the store."""
        pid = int((self.state / "broker.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        (self.state / "broker.pid").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    if not os.environ.get(ENV):
        pytest.skip(f"set {ENV} (scripts/brokers start) to run the ActiveMQ fault tests")
    broker = OwnBroker(tmp_path_factory.mktemp("activemq-own"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def shared_url() -> str:
    url = os.environ.get(ENV)
    if not url:
        pytest.skip(f"set {ENV} to run the ActiveMQ adapter tests")
    return url
