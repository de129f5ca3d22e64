"""``mqkit chaos`` against a three-node RabbitMQ cluster of our own whose queues' leader node is
killed (``kill -9``) mid-stream: the short form of the fault; the long runs are in
docs/availability.md."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import assert_failover, private_cluster, run_chaos
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
    node = shlex.quote(str(NODE_SCRIPT))
    first = shlex.quote(str(directory / "n1"))
    quiet = ">/dev/null 2>&1 </dev/null"
    report = run_chaos(
        url,
        duration=25,
        rate=100,
        kill_at=5,
        kill_cmd=f"bash {node} kill {first} {quiet}",
        restart_at=17,
        restart_cmd=f"bash {node} start {first} {port} mqkc{os.getpid()}-1 {quiet}",
    )
    assert report["confirmed"] > 1500
    assert_failover(report, rate=100, resumed=9, back=16)
