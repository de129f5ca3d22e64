"""Helpers for the RocketMQ adapter tests: dedicated test servers with particular settings.

The shared test server (``adapters/rocketmq/ci/broker start``) auto-creates topics; tests of
unknown topics, credentials, restarts or dead-lettering start their own instance of
``rocketmq_test_server.py`` (a test server, not a broker) on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SERVER = HERE / "rocketmq_test_server.py"


@dataclass
class ServerProcess:
    port: int
    process: subprocess.Popen[bytes]
    args: list[str]
    log: Path

    @property
    def url(self) -> str:
        return f"rocketmq://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def answers(port: int) -> bool:
    done = subprocess.run(
        [sys.executable, str(SERVER), "--check", f"127.0.0.1:{port}"],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


def start_server(tmp: Path, *args: str, port: int = 0) -> ServerProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    log = tmp / "server.log"
    argv = [
        sys.executable,
        str(SERVER),
        "--port",
        str(port),
        "--port-file",
        str(port_file),
        *args,
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=out, cwd=HERE, env=dict(os.environ))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"test server exited: {log.read_text()[-2000:]}")
        if port_file.exists():
            bound = int(port_file.read_text())
            if answers(bound):
                return ServerProcess(bound, process, list(args), log)
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"test server did not start: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_server(tmp: Path, *args: str) -> Iterator[ServerProcess]:
    server = start_server(tmp, *args)
    try:
        yield server
    finally:
        server.stop()



@pytest.fixture(scope="module")
def url_or_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The suite's RocketMQ URL (``MQKIT_TEST_ROCKETMQ_URL``), or a test server started here.

    Always ends with a query string, so tests can append ``&option=value``.
    """
    url = os.environ.get("MQKIT_TEST_ROCKETMQ_URL")
    if url:
        yield url if "?" in url else url + "?request_timeout=3"
        return
    with running_server(
        tmp_path_factory.mktemp("rocketmq"), "--auto-create-topics", "--fifo-groups"
    ) as server:
        yield server.url + "?visibility_timeout=10"
