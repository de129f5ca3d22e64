"""``mqkit chaos`` against a three-node RabbitMQ cluster of our own whose queues' leader node is
killed (``kill -9``) mid-stream: the short form of the fault; the long runs are in
docs/availability.md."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import assert_failover, private_cluster, run_chaos, script_command
from tests.rabbitmq.conftest import NODE_SCRIPT

CLUSTER_SCRIPT = NODE_SCRIPT.parent / "cluster"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, rabbit_url: str
) -> Iterator[tuple[Path, int, str]]:
    """Three nodes (AMQP on ``PORT``…``PORT+2``, distribution 20000 above); yields (directory,
    port, URL)."""
    directory = tmp_path_factory.mktemp("rabbitmq-cluster")
    offsets = [0, 1, 2, 20000, 20001, 20002]
    with private_cluster(CLUSTER_SCRIPT, directory, offsets, f"mqkc{os.getpid()}-") as started:
        yield directory, *started


def test_killing_the_leaders_node_loses_nothing_and_pauses_briefly(
    cluster: tuple[Path, int, str],
) -> None:
    """The clients start on node 1, so it leads every queue they declare; it is killed at 5 s
    and back at 17 s. Nothing confirmed is lost, and producing and consuming go on through
    the other two nodes while it is away (the unavailability is seconds, not the 12 s of the
    node's absence)."""
    directory, port, url = cluster
    first = directory / "n1"
    report = run_chaos(
        url,
        duration=25,
        rate=100,
        kill_at=5,
        kill_cmd=script_command(NODE_SCRIPT, "kill", first),
        restart_at=17,
        restart_cmd=script_command(NODE_SCRIPT, "start", first, port, f"mqkc{os.getpid()}-1"),
    )
    assert report["confirmed"] > 1500
    assert_failover(report, rate=100, resumed=9, back=16)
