"""``mqkit chaos`` against a three-node Apache Kafka cluster of our own (replication factor 3,
``min.insync.replicas=2``) whose first node is killed (``kill -9``) mid-stream: the short form
of the fault; the long runs are in docs/availability.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import assert_failover, private_cluster, run_chaos, script_command
from tests.kafka.conftest import BROKER_SCRIPT

CLUSTER_SCRIPT = BROKER_SCRIPT.parent / "cluster"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, kafka_url: str) -> Iterator[tuple[Path, str]]:
    """Three nodes (brokers on ``PORT``…``PORT+2``, controllers on ``PORT+10``…); yields
    (directory, URL)."""
    directory = tmp_path_factory.mktemp("kafka-cluster")
    with private_cluster(CLUSTER_SCRIPT, directory, [0, 1, 2, 10, 11, 12]) as (_, url):
        yield directory, url


def test_killing_a_node_loses_nothing_and_pauses_briefly(cluster: tuple[Path, str]) -> None:
    """Node 1 leads about a third of the partitions (and may be the active controller or
    coordinate the group); it is killed at 5 s and back at 17 s. Nothing confirmed is lost,
    and the load goes on through the other two nodes once it is fenced (3 s without
    heartbeats, plus a controller election if it was the active one)."""
    directory, url = cluster
    report = run_chaos(
        # async commits: a commit per ack waits for the replicated offsets topic (tens of ms on
        # a shared machine), which would hold a one-at-a-time consumer far below the rate.
        f"{url}&ack_commit=async",
        duration=25,
        rate=100,
        kill_at=5,
        kill_cmd=script_command(CLUSTER_SCRIPT, "node", directory, 1, "kill"),
        restart_at=17,
        restart_cmd=script_command(CLUSTER_SCRIPT, "node", directory, 1, "start"),
    )
    assert report["confirmed"] > 1500
    assert_failover(report, rate=100, resumed=15, back=17)
