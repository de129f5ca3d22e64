"""The spool's metrics follow an outage: pending and unavailable rise while the broker
refuses, fall back to 0 once the spool has forwarded everything."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import mqkit
from tests.outbox.test_spool import broker_refusing
from tests.telemetry.conftest import Telemetry


def spool_readings(telemetry: Telemetry, path: Path) -> dict[str, float]:
    """The ``mqkit.spool.*`` values reported for the spool at ``path`` (name without prefix)."""
    data = telemetry.metrics.get_metrics_data()
    out: dict[str, float] = {}
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if not metric.name.startswith("mqkit.spool."):
                    continue
                for point in metric.data.data_points:
                    attributes = point.attributes or {}
                    if attributes.get("mqkit.spool.path") == str(path):
                        assert attributes.get("messaging.system") == "sqlite"
                        out[metric.name.removeprefix("mqkit.spool.")] = float(
                            getattr(point, "value", 0)
                        )
    return out


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_spool_metrics_follow_an_outage(
    tmp_path: Path, topic: str, group: str, telemetry: Telemetry
) -> None:
    db = tmp_path / "queue.db"
    spool = tmp_path / "orders.spool"

    def readings() -> dict[str, float]:
        return spool_readings(telemetry, spool)

    with mqkit.connect(f"sqlite:///{db}?busy_timeout=0.2") as broker:
        broker.declare(topic, group=group)
        with broker.producer(spool=spool) as producer:
            for n in range(10):
                producer.send(topic, n)
            producer.flush(10)
            assert readings() == {"pending": 0, "unavailable": 0, "forwarded": 10, "failures": 0}
            with broker_refusing(db, 3.0):
                for n in range(20):
                    producer.send(topic, n)
                wait_for(lambda: readings()["failures"] >= 1, "a failed forwarding")
                time.sleep(0.3)
                during = readings()
                assert during["pending"] == 20
                assert during["unavailable"] > 0.2
                assert during["forwarded"] == 10
            wait_for(lambda: readings()["pending"] == 0, "the spool to empty")
            after = readings()
            assert after["forwarded"] == 30
            assert after["unavailable"] == 0
        assert readings() == {}  # the producer closed: its spool is no longer reported
