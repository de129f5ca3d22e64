"""Runs the benchmark workloads on one backend, through mqkit and through the raw client.

Every body carries its sequence number and send time, so each run counts what it lost or got
twice (by sequence number), and latency is measured end to end.
"""

from __future__ import annotations

import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

from mqkit.benchmark.clients import BenchClient, ClientFactory
from mqkit.errors import DeliveryTimeout

_HEADER = struct.Struct(">qd")  # sequence number, send time (time.time())


@dataclass(frozen=True)
class Workload:
    messages: int = 10_000
    size: int = 1024
    producers: int = 1
    consumers: int = 1
    topic_counts: tuple[int, ...] = (1, 10, 100)
    latency_rate: float = 500.0
    latency_seconds: float = 3.0
    timeout: float = 300.0
    repeat: int = 3  # runs per workload and client; the median is reported
    # Messages for the "produce-each" workload (each send confirmed before the next); 0: off.
    confirm_each: int = 0


@dataclass
class Measurement:
    backend: str
    client: str  # "mqkit" or "raw"
    test: str  # "produce", "consume", "latency" or "topics"
    topics: int
    sent: int
    received: int
    lost: int
    duplicated: int
    seconds: float
    rate: float  # messages per second
    mb_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    runs: int = 1  # repetitions behind this row: rate is their median, counts their sum

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def body(seq: int, size: int) -> bytes:
    head = _HEADER.pack(seq, time.time())
    return head + b"\x00" * max(0, size - len(head))


def parse(data: bytes) -> tuple[int, float]:
    seq, sent_at = _HEADER.unpack_from(data)
    return int(seq), float(sent_at)


class _Tally:
    """Thread-safe count of received sequence numbers and latencies."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen: Counter[int] = Counter()
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self.last = 0.0

    def on_body(self, data: bytes) -> None:
        seq, sent_at = parse(data)
        now = time.time()
        with self._lock:
            self.seen[seq] += 1
            self.latencies.append(now - sent_at)
            self.last = time.perf_counter()

    def complete(self) -> bool:
        return len(self.seen) >= self.expected

    def counts(self) -> tuple[int, int, int]:
        received = len(self.seen)
        duplicated = sum(n - 1 for n in self.seen.values())
        return received, self.expected - received, duplicated


#: How long past a run's deadline a client call may go on before the run fails as stuck.
STUCK_AFTER = 30.0


class _Worker:
    """A client call on a thread of its own, joined with ``join``, which re-raises what the call
    raised. A call that outlives its deadline by ``STUCK_AFTER`` fails the run instead of hanging
    the bench: a client library stuck inside a poll is an error to report, not a wait."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # re-raised by join
            self._error = exc

    def join(self, deadline: float | None = None) -> None:
        if deadline is None:
            self._thread.join()
        else:
            self._thread.join(max(0.0, deadline - time.monotonic()) + STUCK_AFTER)
        if self._thread.is_alive():
            raise DeliveryTimeout(
                f"a client call was still running {STUCK_AFTER:.0f} s after the run's deadline "
                "(stuck in the client library); the run is abandoned"
            )
        if self._error is not None:
            raise self._error


def _threads(targets: list[Callable[[], None]], deadline: float | None = None) -> None:
    """Run the calls at once and wait for all of them; the first failure is raised."""
    workers = [_Worker(fn) for fn in targets]
    errors: list[BaseException] = []
    for worker in workers:
        try:
            worker.join(deadline)
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1] * 1000}


class BackendBench:
    """All workloads for one backend and one client kind."""

    def __init__(self, backend: str, client: str, factory: ClientFactory, work: Workload):
        self.backend = backend
        self.client = client
        self.factory = factory
        self.work = work

    def _measure(
        self, test: str, topics: int, seconds: float, tally: _Tally, count: int
    ) -> Measurement:
        """``count`` messages took ``seconds``; loss and duplicates are the whole run's."""
        received, lost, duplicated = tally.counts()
        rate = count / seconds if seconds > 0 else 0.0
        return Measurement(
            backend=self.backend,
            client=self.client,
            test=test,
            topics=topics,
            sent=tally.expected,
            received=received,
            lost=lost,
            duplicated=duplicated,
            seconds=round(seconds, 4),
            rate=round(rate, 1),
            mb_per_s=round(rate * self.work.size / 1e6, 2),
        )

    def _clients(self, count: int) -> list[BenchClient]:
        return [self.factory() for _ in range(count)]

    def throughput(self, topic_count: int = 1) -> list[Measurement]:
        """Produce N messages (P producers, K topics), then consume them (C consumers)."""
        work = self.work
        run = uuid.uuid4().hex[:8]
        topics = [f"bench.{run}.{k}" for k in range(topic_count)]
        group = f"bench.{run}"
        consumers = self._clients(work.consumers)
        producers = self._clients(work.producers)
        try:
            for consumer in consumers:
                consumer.subscribe(topics, group)
            tally = _Tally(work.messages)

            def producing(index: int) -> Callable[[], None]:
                def go() -> None:
                    for k, topic in enumerate(topics):
                        seqs = range(
                            index * topic_count + k, work.messages, work.producers * topic_count
                        )
                        producers[index].produce(topic, (body(s, work.size) for s in seqs))

                return go

            started = time.perf_counter()
            _threads([producing(i) for i in range(work.producers)])
            produced = time.perf_counter() - started
            deadline = time.monotonic() + work.timeout
            started = time.perf_counter()
            _threads(
                [partial(c.consume, tally.on_body, tally.complete, deadline) for c in consumers],
                deadline,
            )
            consumed = (tally.last or time.perf_counter()) - started
        finally:
            for client in consumers + producers:
                client.close()
        return [
            self._measure("produce", topic_count, produced, tally, work.messages),
            self._measure("consume", topic_count, consumed, tally, len(tally.seen)),
        ]

    def produce_each(self) -> list[Measurement]:
        """Send ``confirm_each`` messages one at a time, each confirmed by the broker before the
        next is sent (``produce`` of one body flushes), then consume them to check integrity."""
        work = self.work
        run = uuid.uuid4().hex[:8]
        topic, group = f"bench.{run}.each", f"bench.{run}"
        consumer, producer = self.factory(), self.factory()
        try:
            consumer.subscribe([topic], group)
            tally = _Tally(work.confirm_each)
            started = time.perf_counter()
            for seq in range(work.confirm_each):
                producer.produce(topic, (body(seq, work.size),))
            produced = time.perf_counter() - started
            consumer.consume(tally.on_body, tally.complete, time.monotonic() + work.timeout)
        finally:
            consumer.close()
            producer.close()
        return [self._measure("produce-each", 1, produced, tally, work.confirm_each)]

    def latency(self) -> Measurement:
        """End-to-end latency at a fixed offered rate below saturation."""
        work = self.work
        run = uuid.uuid4().hex[:8]
        topic, group = f"bench.{run}.lat", f"bench.{run}"
        total = max(1, int(work.latency_rate * work.latency_seconds))
        consumer, producer = self.factory(), self.factory()
        try:
            consumer.subscribe([topic], group)
            tally = _Tally(total)
            deadline = time.monotonic() + work.latency_seconds + work.timeout
            receiver = _Worker(partial(consumer.consume, tally.on_body, tally.complete, deadline))

            def paced() -> Iterator[bytes]:
                interval = 1.0 / work.latency_rate
                start = time.perf_counter()
                for seq in range(total):
                    wait = start + seq * interval - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    yield body(seq, work.size)

            started = time.perf_counter()
            producer.produce(topic, paced())
            receiver.join(deadline)
            seconds = time.perf_counter() - started
        finally:
            consumer.close()
            producer.close()
        result = self._measure("latency", 1, seconds, tally, len(tally.seen))
        result.latency_ms = {k: round(v, 3) for k, v in _percentiles(tally.latencies).items()}
        return result

    def plan(self) -> list[tuple[str, Callable[[], list[Measurement]]]]:
        """The workloads in order, each as (name, run once)."""
        steps: list[tuple[str, Callable[[], list[Measurement]]]] = [
            ("throughput", partial(self.throughput, 1)),
            ("latency", lambda: [self.latency()]),
        ]
        if self.work.confirm_each:
            steps.append(("produce-each", self.produce_each))
        for k in self.work.topic_counts:
            if k > 1:
                steps.append((f"{k} topics", partial(self.throughput, k)))
        return steps


def compare(
    benches: Sequence[BackendBench], step: Callable[[BackendBench], None]
) -> list[Measurement]:
    """Run each workload on every client in turn, ``work.repeat`` times; keep the median.

    The clients take turns workload by workload, in alternating order, so a machine whose load
    drifts during the run favours neither side of a ratio. ``step(bench)`` follows each run.
    """
    plans = [bench.plan() for bench in benches]
    results: list[Measurement] = []
    for index in range(len(plans[0]) if plans else 0):
        runs: dict[tuple[str, str, int], list[Measurement]] = {}
        for turn in range(benches[0].work.repeat):
            order = list(zip(benches, plans, strict=True))
            for bench, plan in order if turn % 2 == 0 else reversed(order):
                for m in plan[index][1]():
                    runs.setdefault((m.client, m.test, m.topics), []).append(m)
                step(bench)
        results += [median(ms) for ms in runs.values()]
    return results


def median(runs: list[Measurement]) -> Measurement:
    """The run with the median rate (latency: median p50; of an even number of runs, the slower
    middle one), with every run's integrity counts summed."""
    if runs[0].test == "latency":
        ranked = sorted(runs, key=lambda m: m.latency_ms.get("p50", 0.0))
    else:
        ranked = sorted(runs, key=lambda m: m.rate)
    middle = replace(ranked[(len(ranked) - 1) // 2])
    middle.runs = len(runs)
    middle.sent = sum(m.sent for m in runs)
    middle.received = sum(m.received for m in runs)
    middle.lost = sum(m.lost for m in runs)
    middle.duplicated = sum(m.duplicated for m in runs)
    return middle
