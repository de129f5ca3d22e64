"""``mqkit chaos`` against a RocketMQ broker group of our own in controller mode (a primary and a
synchronously replicated replica, a proxy in front), the primary killed (``kill -9``)
mid-stream: the short form of the fault; the long runs are in docs/availability.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import assert_failover, private_cluster, run_chaos, script_command
from tests.rocketmq.conftest import BROKER_SCRIPT

CLUSTER_SCRIPT = BROKER_SCRIPT.parent / "cluster"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Name server and controller on ``PORT`` and ``PORT+1``, brokers on ``PORT+10`` and
    ``PORT+20`` (each with its fast channel at -2 and HA at +1), the proxy on ``PORT+30``
    and ``+31``; yields (directory, URL)."""
    directory = tmp_path_factory.mktemp("rocketmq-cluster")
    offsets = [0, 1, 8, 10, 11, 18, 20, 21, 30, 31]
    with private_cluster(CLUSTER_SCRIPT, directory, offsets) as (_, url):
        yield directory, url


def test_killing_the_primary_loses_nothing_and_pauses_briefly(cluster: tuple[Path, str]) -> None:
    """The primary is killed at 8 s; the controller makes the in-sync replica the primary
    within a few seconds, and sending goes on. The keys whose messages were in flight at the
    kill wait on the new primary until those messages' invisible time (the URL's
    ``visibility_timeout=10``) has run out, and then catch up; the killed broker comes back at
    30 s as the new replica."""
    directory, url = cluster
    report = run_chaos(
        url,
        duration=36,
        rate=50,
        kill_at=8,
        kill_cmd=script_command(CLUSTER_SCRIPT, "node", directory, "primary", "kill"),
        restart_at=30,
        restart_cmd=script_command(CLUSTER_SCRIPT, "node", directory, "last", "start"),
    )
    assert report["confirmed"] > 1400
    assert_failover(report, rate=50, resumed=25, back=30)
