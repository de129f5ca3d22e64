"""The metrics through OpenTelemetry's Prometheus exporter, read back by ``mqkit top``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

import mqkit
from mqkit.helpers import RetryPolicy, retry
from mqkit.telemetry import MqkitInstrumentor
from tests.helpers.apps import running


def test_mqkit_top_shows_what_an_app_did(topic: str) -> None:
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = MqkitInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        app = mqkit.App(f"memory://{uuid.uuid4().hex}")
        done = threading.Event()
        seen: list[object] = []

        @app.handler(topic, group="billing", middleware=[retry(RetryPolicy(max_attempts=1))])
        def bill(message: mqkit.Message) -> None:
            seen.append(message.value)
            if len(seen) == 4:
                done.set()
            if message.value == "bad":
                raise ValueError("declined")

        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with running(app):
            with app.broker.producer() as producer:
                for value in (1, 2, "bad", 3):
                    producer.send(topic, value)
            assert done.wait(10)
            stats = app.stats("billing")
            for _ in range(200):
                if stats.processed + stats.failed == 4:
                    break
                time.sleep(0.02)
            shown = subprocess.run(
                [sys.executable, "-m", "mqkit.cli", "top", url, "--once", "--interval", "0.2"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert (stats.processed, stats.failed, stats.dead_lettered) == (3, 1, 1)
        assert shown.returncode == 0, shown.stderr
        [row] = [line for line in shown.stdout.splitlines() if "billing" in line]
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        # group, topic, consumed/s, processed/s, failed, retried, dead-lettered, duplicates,
        # backlog (all acked)
        assert cells[0] == "billing" and cells[1] == topic
        assert cells[4:] == ["1", "0", "1", "0", "0"], cells
    finally:
        instrumentor.uninstrument()
        server.shutdown()
        thread.join()
        provider.shutdown()  # unregisters the reader's collector from the registry
