"""The RocketMQ 5 *test server* (``rocketmq_test_server.py``, a gRPC stand-in for a proxy, not
RocketMQ), for what the CI cluster of real Apache RocketMQ cannot show: a proxy with ACLs (the
CI cluster runs without them). Everything else in ``tests/rocketmq`` runs on real RocketMQ.
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

HERE = Path(__file__).resolve().parent
SERVER = HERE / "rocketmq_test_server.py"


@dataclass
class ServerProcess:
    port: int
    process: subprocess.Popen[bytes]
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


@contextlib.contextmanager
def running_server(tmp: Path, *args: str) -> Iterator[ServerProcess]:
    """A test server on a free loopback port, with ``args`` (see the server's ``--help``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port_file = tmp / "port"
    log = tmp / "server.log"
    argv = [sys.executable, str(SERVER), "--port", "0", "--port-file", str(port_file), *args]
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=out, cwd=HERE, env=dict(os.environ))
    server = None
    try:
        deadline = time.monotonic() + 30
        while server is None:
            if process.poll() is not None:
                raise RuntimeError(f"test server exited: {log.read_text()[-2000:]}")
            if port_file.exists() and answers(int(port_file.read_text())):
                server = ServerProcess(int(port_file.read_text()), process, log)
            elif time.monotonic() > deadline:
                raise RuntimeError(f"test server did not start: {log.read_text()[-2000:]}")
            else:
                time.sleep(0.1)
        yield server
    finally:
        if server is not None:
            server.stop()
        elif process.poll() is None:
            process.kill()
            process.wait()
