"""OpenTelemetry tracing and metrics for mqkit, on every backend (``pip install 'mqkit[otel]'``).

``MqkitInstrumentor().instrument()`` fills the core's hook slot (:mod:`mqkit.observe`);
``uninstrument()`` empties it. Until then mqkit never imports OpenTelemetry and pays one global
read per send and per message.

What it records, after OpenTelemetry's messaging semantic conventions:

* a **PRODUCER** span ``send {topic}`` per :meth:`mqkit.Producer.send` (and ``reply``, and
  :class:`mqkit.aio.AsyncProducer`'s, where it covers the queueing for the sender thread). The
  W3C ``traceparent`` / ``tracestate`` of that span go into the message's headers
  (:data:`mqkit.envelope.TRACEPARENT`), which every adapter carries as plain headers, so any
  instrumented client reading the message continues the trace;
* a **CONSUMER** span ``process {topic}`` per message an :class:`mqkit.App` (sync or async)
  dispatches, and per retry copy a retry relay hands to the handler: its parent is the context
  in the message's ``traceparent`` (whoever set it: mqkit or another service), and it is the
  current span while the handler runs (sends from the handler are its children). A copy the
  retry helper or the dead-letter helpers published (a retry copy, a dead letter, a replay)
  carries the original message's context in :data:`mqkit.envelope.ORIGIN_TRACEPARENT`, and its
  process span **links** to it. A handler failure is recorded on the span (an exception event,
  status ERROR), as are the helpers' decisions (``retried``, ``dead_lettered``,
  ``duplicates``, ``deferred`` events);
* **metrics** (when a meter provider is set): ``messaging.client.sent.messages``,
  ``messaging.client.consumed.messages`` (per message dispatched), ``messaging.client.operation
  .duration`` (send) and ``messaging.process.duration`` histograms, and ``mqkit.messages.acked``
  / ``nacked`` / ``processed`` / ``failed`` / ``retried`` / ``dead_lettered`` / ``duplicates`` /
  ``deferred`` counters, the last six counting exactly what ``App.stats`` counts; the
  ``mqkit.queue.depth`` gauge of a running App's groups; per producer spool (``spool=``), the
  ``mqkit.spool.pending`` and ``mqkit.spool.unavailable`` (seconds) gauges and the
  ``mqkit.spool.forwarded`` and ``mqkit.spool.failures`` counters (attribute
  ``mqkit.spool.path``).

Attributes: ``messaging.system``, ``messaging.destination.name``,
``messaging.consumer.group.name``, ``messaging.message.id``, ``messaging.operation.name`` and
``.type``, ``messaging.message.body.size``, ``messaging.message.conversation_id`` (the
correlation id) and ``mqkit.delivery.attempt``; metrics carry the first three (and
``error.type`` on failures).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract, inject
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mqkit import envelope, observe
from mqkit.envelope import HeaderValue
from mqkit.message import Message, OutgoingMessage
from mqkit.spool import SpoolStatus

__all__ = ["MqkitInstrumentor"]

log = logging.getLogger(__name__)

_NAME = "mqkit"
_VERSION = "0.1.0"
_W3C = TraceContextTextMapPropagator()
#: Headers that mark a message as a copy of another (retry copy, dead letter, replay).
_COPY_MARKS = (envelope.ORIGIN_ID, envelope.DLQ_ID)
_OUTCOMES: tuple[observe.Event, ...] = (
    "processed",
    "failed",
    "retried",
    "dead_lettered",
    "duplicates",
    "deferred",
)


class _Getter(Getter[Mapping[str, HeaderValue]]):
    """Reads text-map carriers out of mqkit headers (whatever type a transport gave them)."""

    def get(self, carrier: Mapping[str, HeaderValue], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [envelope.header_text(carrier, key)]

    def keys(self, carrier: Mapping[str, HeaderValue]) -> list[str]:
        return list(carrier)


_GETTER = _Getter()


#: The messaging conventions' advice for duration histograms, in seconds.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

#: The attributes of the counters, in the order of their keys in :class:`_Counts`.
_SEND_KEY = ("messaging.system", "messaging.destination.name")
_GROUP_KEY = ("messaging.system", "messaging.destination.name", "messaging.consumer.group.name")
_ERROR_KEY = (*_GROUP_KEY, "error.type")


class _Counts:
    """A counter kept as plain integers per attribute values, handed to the SDK only when it
    collects (an observable counter): counting a send or an ack is a dict update under a lock,
    not a synchronous measurement (several microseconds each in the SDK)."""

    def __init__(self, names: tuple[str, ...], extra: Mapping[str, str]) -> None:
        self.names = names
        self.extra = dict(extra)
        self._lock = threading.Lock()
        self._values: dict[tuple[Any, ...], int] = {}

    def add(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            values = list(self._values.items())
        return [
            Observation(count, {**self.extra, **dict(zip(self.names, key, strict=True))})
            for key, count in values
        ]


def _spool_readings(
    read: Callable[[SpoolStatus], float],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """An observable instrument's callback: ``read`` of every open spool of this process."""

    def observe_spools(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(read(status()), {"messaging.system": system, "mqkit.spool.path": path})
            for (system, path), status in observe.spools.items()
        ]

    return observe_spools


def _queue_depths(options: CallbackOptions) -> Iterable[Observation]:
    """The backlog of every route of the Apps running here (read when metrics are collected)."""
    out = []
    for (system, group, topics), depth in observe.routes.items():
        try:
            value = depth()
        except Exception as exc:  # a broker closing, unreachable: no value this time
            log.debug("mqkit.telemetry: no queue depth for %s: %s", group, exc)
            continue
        if value is not None:
            attributes = {
                "messaging.system": system,
                "messaging.destination.name": ",".join(topics),
                "messaging.consumer.group.name": group,
            }
            out.append(Observation(value, attributes))
    return out


class _Unobserved:
    """The scope of a send or a message the hooks failed to observe."""

    def end(self, error: BaseException | None = None) -> None:
        pass

    def event(self, name: observe.Event, error: BaseException | None) -> None:
        pass


_UNOBSERVED = _Unobserved()


class _SendScope:
    __slots__ = ("attributes", "hooks", "key", "span", "started")

    def __init__(
        self, hooks: _Hooks, span: trace.Span, attributes: dict[str, Any], key: tuple[str, str]
    ) -> None:
        self.hooks = hooks
        self.span = span
        self.attributes = attributes
        self.key = key
        self.started = time.perf_counter()

    def end(self, error: BaseException | None) -> None:
        elapsed = time.perf_counter() - self.started
        attributes = self.attributes
        if error is not None:
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            attributes = {**attributes, "error.type": type(error).__qualname__}
        self.span.end()
        self.hooks.send_duration.record(elapsed, attributes)
        if error is None:
            self.hooks.sent.add(self.key)


class _ProcessScope:
    __slots__ = ("attributes", "hooks", "key", "span", "started", "token")

    def __init__(
        self,
        hooks: _Hooks,
        span: trace.Span,
        attributes: dict[str, Any],
        key: tuple[str, str, str],
    ) -> None:
        self.hooks = hooks
        self.span = span
        self.attributes = attributes
        self.key = key
        self.started = time.perf_counter()
        self.token = otel_context.attach(trace.set_span_in_context(span))

    def event(self, name: observe.Event, error: BaseException | None) -> None:
        key: tuple[Any, ...] = self.key
        if name == "failed" and error is not None:
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            key = (*key, type(error).__qualname__)
        elif name != "processed":
            self.span.add_event(f"mqkit.{name}")
        self.hooks.outcomes[name].add(key)

    def end(self) -> None:
        otel_context.detach(self.token)
        self.span.end()
        self.hooks.process_duration.record(time.perf_counter() - self.started, self.attributes)


class _Hooks:
    """The :class:`mqkit.observe.Hooks` that record spans and metrics with OpenTelemetry."""

    def __init__(
        self, tracer_provider: trace.TracerProvider | None, meter_provider: Any | None
    ) -> None:
        self.tracer = trace.get_tracer(_NAME, _VERSION, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_NAME, _VERSION, meter_provider=meter_provider)
        send = {"messaging.operation.name": "send", "messaging.operation.type": "send"}
        process = {"messaging.operation.name": "process", "messaging.operation.type": "process"}
        self.sent = self._counter(
            meter, "messaging.client.sent.messages", "Messages a producer sent.", _SEND_KEY, send
        )
        self.consumed = self._counter(
            meter,
            "messaging.client.consumed.messages",
            "Messages an App dispatched to its handlers.",
            _GROUP_KEY,
            process,
        )
        self.send_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            "s",
            "Duration of send operations.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration",
            "s",
            "Duration of processing a message (App).",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.acked = self._counter(meter, "mqkit.messages.acked", "Messages acked.", _GROUP_KEY, {})
        self.nacked = self._counter(
            meter,
            "mqkit.messages.nacked",
            "Messages nacked (given back or dropped).",
            _GROUP_KEY,
            {},
        )
        self.outcomes = {
            name: self._counter(
                meter,
                f"mqkit.messages.{name}",
                f"App.stats '{name}' (see mqkit.observe.RouteStats).",
                _ERROR_KEY if name == "failed" else _GROUP_KEY,
                process,
            )
            for name in _OUTCOMES
        }

        meter.create_observable_gauge(
            "mqkit.queue.depth",
            [_queue_depths],
            "{message}",
            "Messages a running App's group has not acked yet, where the backend can tell.",
        )
        spool = [
            (
                "mqkit.spool.pending",
                "{message}",
                "Messages in a producer's spool, not yet confirmed by the broker.",
                lambda s: s.pending,
            ),
            (
                "mqkit.spool.unavailable",
                "s",
                "How long a spool's forwarding has been failing (0 while the broker answers).",
                lambda s: 0.0 if s.down_since is None else max(0.0, time.time() - s.down_since),
            ),
        ]
        for name, unit, description, read in spool:
            meter.create_observable_gauge(name, [_spool_readings(read)], unit, description)
        meter.create_observable_counter(
            "mqkit.spool.forwarded",
            [_spool_readings(lambda s: s.forwarded)],
            "{message}",
            "Messages a spool forwarded and the broker confirmed.",
        )
        meter.create_observable_counter(
            "mqkit.spool.failures",
            [_spool_readings(lambda s: s.failures)],
            "{attempt}",
            "Spool forwarding attempts that failed (broker unreachable or refusing).",
        )

    @staticmethod
    def _counter(
        meter: metrics.Meter,
        name: str,
        description: str,
        names: tuple[str, ...],
        extra: Mapping[str, str],
    ) -> _Counts:
        counts = _Counts(names, extra)
        meter.create_observable_counter(name, [counts.observe], "{message}", description)
        return counts

    # -- sending ---------------------------------------------------------------------------

    # Telemetry must never break messaging: a failure in here is logged, and the send or the
    # message goes on unobserved.

    def sending(self, system: str, message: OutgoingMessage) -> observe.SendScope:
        try:
            return self._sending(system, message)
        except Exception:
            log.exception("mqkit.telemetry: could not trace a send to %s", message.topic)
            return _UNOBSERVED

    def processing(self, system: str, group: str, message: Message) -> observe.ProcessScope:
        try:
            return self._processing(system, group, message)
        except Exception:
            log.exception("mqkit.telemetry: could not trace processing %r", message)
            return _UNOBSERVED

    def _sending(self, system: str, message: OutgoingMessage) -> _SendScope:
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.destination.name": message.topic,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
        }
        span_attributes = {
            **attributes,
            "messaging.message.id": message.id,
            "messaging.message.body.size": len(message.body),
        }
        if message.correlation_id:
            span_attributes["messaging.message.conversation_id"] = message.correlation_id
        headers: dict[str, HeaderValue] = dict(message.headers)
        parent = None
        if envelope.TRACEPARENT in headers:
            if any(mark in headers for mark in _COPY_MARKS):
                # A copy of a traced message: keep the original's context for a link.
                headers.setdefault(
                    envelope.ORIGIN_TRACEPARENT,
                    envelope.header_text(headers, envelope.TRACEPARENT),
                )
            elif not trace.get_current_span().get_span_context().is_valid:
                # Nothing traced here, but the caller passed a context along: continue it.
                parent = _W3C.extract(headers, getter=_GETTER)
        span = self.tracer.start_span(
            f"send {message.topic}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=span_attributes,
        )
        for name in (envelope.TRACEPARENT, envelope.TRACESTATE):
            headers.pop(name, None)
        carrier: dict[str, str] = {}
        inject(carrier, context=trace.set_span_in_context(span))
        headers.update(carrier)
        message.headers = headers
        return _SendScope(self, span, attributes, (system, message.topic))

    # -- processing ------------------------------------------------------------------------

    def _processing(self, system: str, group: str, message: Message) -> _ProcessScope:
        headers = message.headers
        topic = message.topic
        if envelope.RETRY_TOPIC in headers:  # a retry copy: named after the original topic
            topic = envelope.header_text(headers, envelope.RETRY_TOPIC, topic)
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": group,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
        }
        span_attributes = {
            **attributes,
            "messaging.message.id": message.id,
            "messaging.message.body.size": len(message.body),
            "mqkit.delivery.attempt": message.attempt,
        }
        if message.correlation_id:
            span_attributes["messaging.message.conversation_id"] = message.correlation_id
        parent = extract(headers, getter=_GETTER) if envelope.TRACEPARENT in headers else None
        links: list[Link] = []
        if envelope.ORIGIN_TRACEPARENT in headers:
            origin = _W3C.extract(
                {"traceparent": envelope.header_text(headers, envelope.ORIGIN_TRACEPARENT)}
            )
            origin_span = trace.get_current_span(origin).get_span_context()
            if origin_span.is_valid:
                links.append(Link(origin_span, {"mqkit.link": "original"}))
        span = self.tracer.start_span(
            f"process {topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=span_attributes,
            links=links,
        )
        key = (system, topic, group)
        self.consumed.add(key)
        return _ProcessScope(self, span, attributes, key)

    def settled(self, system: str, group: str, message: Message, ack: bool) -> None:
        (self.acked if ack else self.nacked).add((system, message.topic, group))


class MqkitInstrumentor:
    """Instruments mqkit with OpenTelemetry (see the module docs); the interface of
    OpenTelemetry's instrumentors: ``instrument(tracer_provider=…, meter_provider=…)`` (the
    global providers by default) and ``uninstrument()``. One instrumentation at a time: a
    second ``instrument()`` is ignored until ``uninstrument()``."""

    _instrumented = False

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return MqkitInstrumentor._instrumented

    def instrument(self, **kwargs: Any) -> None:
        if MqkitInstrumentor._instrumented:
            return
        observe.install(_Hooks(kwargs.get("tracer_provider"), kwargs.get("meter_provider")))
        MqkitInstrumentor._instrumented = True

    def uninstrument(self, **kwargs: Any) -> None:
        if not MqkitInstrumentor._instrumented:
            return
        observe.install(None)
        MqkitInstrumentor._instrumented = False
