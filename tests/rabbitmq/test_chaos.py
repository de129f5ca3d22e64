"""``mqkit chaos`` against a private RabbitMQ node stopped and started during the load (the
short form of the fault; the long runs are in docs/availability.md)."""

from __future__ import annotations

from tests.chaos import run_chaos, script_command
from tests.rabbitmq.conftest import NODE_SCRIPT, Node


def test_chaos_through_a_node_restart_loses_nothing_confirmed(node: Node) -> None:
    report = run_chaos(
        node.url,
        duration=25,
        rate=100,
        kill_at=3,
        kill_cmd=script_command(NODE_SCRIPT, "stop", node.directory),
        restart_at=6,
        restart_cmd=script_command(NODE_SCRIPT, "start", node.directory, node.port, node.name),
    )
    assert report["lost"] == 0
    assert report["duplicate_effects"] == 0
    assert report["confirmed"] > 1000
    assert report["unavailable"] > 1.0  # the node was down: it shows
    assert [what.split(":")[0] for _, what in report["events"]] == [
        "kill",
        "kill command returned 0",
        "restart",
        "restart command returned 0",
    ]
