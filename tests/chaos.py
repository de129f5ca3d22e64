"""Shared by the fault tests that run ``mqkit chaos`` against a broker or a cluster of the tests'
own: the CLI run in a child process, and free loopback ports for private clusters."""

from __future__ import annotations

import contextlib
import json
import random
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def run_chaos(
    url: str,
    *,
    duration: float,
    rate: float,
    kill_at: float,
    kill_cmd: str,
    restart_at: float,
    restart_cmd: str,
) -> dict[str, Any]:
    """``mqkit chaos --json`` in a child process; its one report. Fails on a non-zero exit (a
    confirmed message lost) with the end of its progress output."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mqkit.cli import main; main()",
            "chaos",
            "--url",
            url,
            "--duration",
            str(duration),
            "--rate",
            str(rate),
            "--kill-at",
            str(kill_at),
            "--kill-cmd",
            kill_cmd,
            "--restart-at",
            str(restart_at),
            "--restart-cmd",
            restart_cmd,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## mqkit chaos on" in done.stderr  # the Markdown report goes to the terminal too
    [report] = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def free_port(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(offsets: Iterable[int], low: int = 20000, high: int = 29000) -> int:
    """A base port ``p`` such that every ``p + offset`` is free on loopback."""
    wanted = list(offsets)
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(low, high)
        if all(free_port(port + offset) for offset in wanted):
            return port
    raise RuntimeError("no free loopback ports for a private broker")


def run_script(script: Path, *args: str, log: Path) -> tuple[int, str]:
    """Run a broker script with its output in files, not pipes (the brokers it starts keep the
    descriptors they inherit, so a pipe would never close): exit code and stdout."""
    out = log.with_suffix(".out")
    with out.open("w") as stdout, log.open("a") as stderr:
        code = subprocess.run(
            ["bash", str(script), *args],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            timeout=300,
            check=False,
        ).returncode
    return code, out.read_text().strip()


def script_command(script: Path, *args: str | Path | int) -> str:
    """The shell command for ``mqkit chaos --kill-cmd/--restart-cmd`` that runs a broker script
    with these arguments, quoted, its output and input on /dev/null (a node it starts keeps
    what it inherits)."""
    words = " ".join(shlex.quote(str(word)) for word in (script, *args))
    return f"bash {words} >/dev/null 2>&1 </dev/null"


@contextlib.contextmanager
def private_cluster(
    script: Path, directory: Path, offsets: Iterable[int], *args: str
) -> Iterator[tuple[int, str]]:
    """``SCRIPT start DIRECTORY PORT ARGS…`` on a base port whose ``offsets`` are all free;
    yields (port, the URL it printed); ``SCRIPT stop DIRECTORY`` afterwards, however it ends."""
    port = free_ports(offsets)
    log = directory / "cluster.log"
    try:
        code, url = run_script(script, "start", str(directory), str(port), *args, log=log)
        assert code == 0, log.read_text()[-3000:]
        yield port, url
    finally:
        run_script(script, "stop", str(directory), log=log)


def assert_failover(report: dict[str, Any], *, rate: float, resumed: float, back: float) -> None:
    """A replicated setup through a node fault: nothing confirmed lost, no effect twice, no
    stretch of 10 s or more without progress, and from ``resumed`` seconds until the node is
    ``back`` at least 70 % of the offered ``rate`` both confirmed and received."""
    assert report["lost"] == 0
    assert report["duplicate_effects"] == 0
    assert report["unavailable"] < 10.0
    away = [s for s in report["timeline"] if resumed <= s["t"] < back]
    assert away
    for field in ("confirmed", "received"):
        assert sum(s[field] for s in away) > 0.7 * rate * len(away), (field, away)
