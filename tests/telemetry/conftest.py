"""OpenTelemetry's SDK with in-memory exporters, and mqkit instrumented with it per test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mqkit import observe
from mqkit.telemetry import MqkitInstrumentor


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.finished() if span.name == name]

    def counters(self) -> dict[tuple[str, str], int]:
        """Sum of each counter per (metric name, consumer group or destination)."""
        out: dict[tuple[str, str], int] = {}
        data = self.metrics.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value: Any = getattr(point, "value", None)
                        if value is None:
                            value = getattr(point, "count", 0)
                        attributes = point.attributes or {}
                        where = str(
                            attributes.get("messaging.consumer.group.name")
                            or attributes.get("messaging.destination.name")
                        )
                        key = (metric.name, where)
                        out[key] = out.get(key, 0) + int(value)
        return out


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = MqkitInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Telemetry(tracer_provider, spans, reader)
    finally:
        instrumentor.uninstrument()
        assert observe.active is None
        meter_provider.shutdown()
