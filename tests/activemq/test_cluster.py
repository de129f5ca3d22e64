"""``mqkit chaos`` against an ActiveMQ primary and backup of our own on one shared store, the
primary killed (``kill -9``) mid-stream: the short form of the fault; the long runs are in
docs/availability.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.activemq.conftest import SCRIPT
from tests.chaos import assert_failover, private_cluster, run_chaos, script_command

CLUSTER_SCRIPT = SCRIPT.parent / "cluster"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Primary (STOMP on ``PORT``) and backup (``PORT+1``); yields (directory, URL)."""
    if not Path("/usr/share/activemq").exists():
        pytest.fail("fault tests need Debian's activemq (adapters/activemq/ci/broker start)")
    directory = tmp_path_factory.mktemp("activemq-cluster")
    with private_cluster(CLUSTER_SCRIPT, directory, [0, 1]) as (_, url):
        yield directory, url


def test_killing_the_primary_loses_nothing_and_pauses_briefly(cluster: tuple[Path, str]) -> None:
    """The primary is killed at 5 s: the backup takes the store's lock (tried every second),
    serves what was persisted, and the clients move to it (the URL's second host); the killed
    broker comes back at 17 s as the new backup."""
    directory, url = cluster
    report = run_chaos(
        url,
        duration=25,
        rate=100,
        kill_at=5,
        kill_cmd=script_command(CLUSTER_SCRIPT, "node", directory, 1, "kill"),
        restart_at=17,
        restart_cmd=script_command(CLUSTER_SCRIPT, "node", directory, 1, "start"),
    )
    assert report["confirmed"] > 1500
    assert_failover(report, rate=100, resumed=15, back=17)
