"""``mqkit demo --scenario consistency|outage``: the services converge, 0 lost, 0 duplicated."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "args",
    [
        ["--scenario", "consistency", "--orders", "400", "--fail-for", "1"],
        ["--scenario", "outage", "--orders", "900", "--outage", "2"],
    ],
    ids=["consistency", "outage"],
)
def test_the_producer_side_scenarios_converge(tmp_db: str, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mqkit.cli", "demo", "--url", tmp_db, "--timeout", "60", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "every service converged: 0 lost, 0 duplicated" in done.stderr
    if args[1] == "consistency":
        assert "crashed before marking them sent" in done.stderr
        assert "declined (rolled back with their messages)" in done.stderr
    else:
        assert "broker: unavailable" in done.stderr
        assert "none refused" in done.stderr
