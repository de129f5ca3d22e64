"""mqkit's metrics for Prometheus, through OpenTelemetry's Prometheus exporter.

    pip install 'mqkit[otel]' opentelemetry-sdk opentelemetry-exporter-prometheus
    python examples/prometheus_metrics.py [URL] [PORT]

Runs an App on URL (default ``sqlite:///.mqkit/prometheus-example.db``) whose handler fails
every seventh order (retried, then dead-lettered) and serves the metrics on
``http://localhost:PORT/metrics`` (default 9464), plus ``/ready`` and ``/alive`` for
Kubernetes probes. A thread sends a few orders a second. Look at it with

    curl -s localhost:9464/metrics | grep mqkit_messages
    mqkit top http://localhost:9464/metrics

or point a Prometheus scrape job at it::

    scrape_configs:
      - job_name: orders
        static_configs: [{targets: ["localhost:9464"]}]
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, generate_latest

import mqkit
from mqkit.helpers import RetryPolicy, retry
from mqkit.telemetry import MqkitInstrumentor


def main(url: str, port: int) -> None:
    # The exporter registers a collector with prometheus_client's default registry.
    MqkitInstrumentor().instrument(
        meter_provider=MeterProvider(metric_readers=[PrometheusMetricReader()])
    )
    app = mqkit.App(url)

    @app.handler(
        "orders", group="billing", middleware=[retry(RetryPolicy.fixed(0.5, max_attempts=3))]
    )
    def bill(message: mqkit.Message) -> None:
        if message.value["n"] % 7 == 0:
            raise ValueError(f"card declined for order {message.value['n']}")

    class Endpoints(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body = generate_latest(REGISTRY)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)
                return
            ok = {"/ready": app.ready, "/alive": app.alive}.get(self.path)
            self.send_response(404 if ok is None else 200 if ok else 503)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("", port), Endpoints)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def produce() -> None:
        with app.broker.producer() as producer:
            n = 0
            while app.ready:
                n += 1
                producer.send("orders", {"n": n})
                time.sleep(0.2)

    print(f"metrics on http://localhost:{port}/metrics; Ctrl-C stops", flush=True)
    app.run(on_ready=lambda: threading.Thread(target=produce, daemon=True).start())
    server.shutdown()
    app.close()


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "sqlite:///.mqkit/prometheus-example.db",
        int(sys.argv[2]) if len(sys.argv) > 2 else 9464,
    )
