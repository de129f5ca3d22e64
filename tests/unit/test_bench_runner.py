"""How ``mqkit bench`` turns repeated runs into one row per workload and client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

import pytest

from mqkit.benchmark import runner
from mqkit.benchmark.runner import BackendBench, Measurement, Workload, compare, median
from mqkit.errors import BrokerUnavailable, DeliveryTimeout


def _m(client: str, rate: float, lost: int = 0, test: str = "produce") -> Measurement:
    return Measurement("b", client, test, 1, 10, 10 - lost, lost, 0, 1.0, rate, rate / 1e6)


class _Scripted(BackendBench):
    """Runs nothing: records the order it was asked in and returns preset rates."""

    def __init__(self, client: str, rates: list[float], log: list[str]) -> None:
        super().__init__("b", client, lambda: None, Workload(topic_counts=(1,), repeat=3))  # type: ignore[arg-type,return-value]
        self._rates = iter(rates)
        self._log = log

    def plan(self) -> list[tuple[str, object]]:  # type: ignore[override]
        def run() -> list[Measurement]:
            self._log.append(self.client)
            return [_m(self.client, next(self._rates))]

        return [("throughput", run)]


def test_clients_take_turns_in_alternating_order_and_the_median_is_kept() -> None:
    log: list[str] = []
    raw = _Scripted("raw", [10.0, 30.0, 20.0], log)
    mqkit = _Scripted("mqkit", [5.0, 1.0, 9.0], log)
    steps: list[str] = []
    rows = compare([raw, mqkit], lambda bench: steps.append(bench.client))
    assert log == ["raw", "mqkit", "mqkit", "raw", "raw", "mqkit"]
    assert steps == log
    assert {r.client: r.rate for r in rows} == {"raw": 20.0, "mqkit": 5.0}
    assert all(r.runs == 3 and r.sent == 30 for r in rows)


def test_a_loss_in_any_run_shows_in_the_row() -> None:
    row = median([_m("mqkit", 100.0), _m("mqkit", 50.0, lost=2), _m("mqkit", 70.0)])
    assert row.rate == 70.0
    assert row.lost == 2 and row.received == 28 and row.sent == 30


def test_latency_rows_keep_the_run_with_the_median_p50() -> None:
    runs = [_m("mqkit", 200.0, test="latency") for _ in range(3)]
    for run, p50 in zip(runs, (9.0, 1.0, 4.0), strict=True):
        run.latency_ms = {"p50": p50}
    assert median(runs).latency_ms == {"p50": 4.0}


class _Stuck:
    """A client whose consume never returns, as a client library stuck inside its poll."""

    def __init__(self, release: threading.Event) -> None:
        self._release = release

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        pass

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        for _ in bodies:
            pass

    def consume(
        self, on_body: Callable[[bytes], None], until: Callable[[], bool], deadline: float
    ) -> None:
        self._release.wait()

    def close(self) -> None:
        pass


def test_a_client_stuck_past_the_deadline_fails_the_run_instead_of_hanging_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "STUCK_AFTER", 0.2)
    release = threading.Event()
    work = Workload(latency_rate=100, latency_seconds=0.05, timeout=0.1, topic_counts=(1,))
    bench = BackendBench("b", "raw", lambda: _Stuck(release), work)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryTimeout, match="stuck in the client library"):
            bench.latency()
        with pytest.raises(DeliveryTimeout):
            bench.throughput(1)
    finally:
        release.set()
    assert time.monotonic() - started < 5


def test_an_error_in_the_receiving_thread_fails_the_latency_run() -> None:
    class Failing(_Stuck):
        def consume(
            self, on_body: Callable[[bytes], None], until: Callable[[], bool], deadline: float
        ) -> None:
            raise BrokerUnavailable("connection lost")

    work = Workload(latency_rate=100, latency_seconds=0.05, timeout=1.0, topic_counts=(1,))
    bench = BackendBench("b", "raw", lambda: Failing(threading.Event()), work)
    with pytest.raises(BrokerUnavailable, match="connection lost"):
        bench.latency()
