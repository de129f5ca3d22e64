"""Per-message overhead of each reliability helper on the SQLite backend.

    python -m mqkit.benchmark.helpers_overhead [--messages 5000] [--repeat 3]

For each variant, ``--messages`` messages are queued in a fresh SQLite database first, then an
App drains them; the time from the App being ready to the last message handled, divided by the
count, is the cost per message. The overhead of a helper is its cost minus the plain handler's,
measured in the same run. Each variant runs ``--repeat`` times; the median is printed.

A second table times the wrapper alone (no broker): the handler called directly in a loop.

Redis and PostgreSQL stores are included when ``MQKIT_TEST_REDIS_URL`` /
``MQKIT_TEST_POSTGRES_DSN`` are set (``scripts/brokers.d/services start`` prints them).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mqkit
from mqkit import App, Message
from mqkit.helpers import (
    MemoryStore,
    RetryPolicy,
    SequenceChecker,
    SqliteStore,
    idempotent,
    retry,
)
from mqkit.helpers.idempotency import IdempotencyStore
from mqkit.helpers.ordering import Sequencer
from mqkit.message import Delivery

Setup = Callable[[Path], tuple[dict[str, Any], Callable[[], None]]]


def stores(tmp: Path) -> dict[str, Callable[[], IdempotencyStore]]:
    out: dict[str, Callable[[], IdempotencyStore]] = {
        "memory": MemoryStore,
        "sqlite": lambda: SqliteStore(tmp / f"idem-{uuid.uuid4().hex[:6]}.db"),
    }
    if os.environ.get("MQKIT_TEST_REDIS_URL"):
        from mqkit.helpers.stores.redis import RedisStore

        url = os.environ["MQKIT_TEST_REDIS_URL"]
        out["redis"] = lambda: RedisStore(url, prefix=f"bench:{uuid.uuid4().hex}:")
    if os.environ.get("MQKIT_TEST_POSTGRES_DSN"):
        from mqkit.helpers.stores.postgres import PostgresStore

        dsn = os.environ["MQKIT_TEST_POSTGRES_DSN"]
        out["postgres"] = lambda: PostgresStore(dsn, table="mqkit_bench_idempotency")
    return out


def variants(tmp: Path) -> dict[str, Callable[[], dict[str, Any]]]:
    """name -> factory of App.handler keyword arguments."""
    out: dict[str, Callable[[], dict[str, Any]]] = {"plain handler": dict}
    for name, make in stores(tmp).items():
        out[f"idempotent ({name} store)"] = lambda make=make: {  # type: ignore[misc]
            "middleware": [idempotent(make())]
        }
    out["retry (no failure)"] = lambda: {"middleware": [retry(RetryPolicy.fixed(0.0))]}
    out["retry + idempotent (sqlite)"] = lambda: {
        "middleware": [
            retry(RetryPolicy.fixed(0.0)),
            idempotent(SqliteStore(tmp / f"idem-{uuid.uuid4().hex[:6]}.db")),
        ]
    }
    out["sequence check"] = lambda: {"middleware": [SequenceChecker().middleware]}
    out["ordered pool, 8 workers"] = lambda: {"workers": 8}
    return out


def drain(url: str, count: int, handler_kwargs: dict[str, Any], fail_first: bool) -> float:
    """Seconds per message for an App draining ``count`` queued messages."""
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    done = threading.Event()
    handled = 0
    lock = threading.Lock()
    with mqkit.connect(url) as broker:
        app = App(broker=broker)

        def handle(message: Message) -> None:
            nonlocal handled
            if fail_first and message.attempt == 1:
                raise RuntimeError("transient")
            with lock:
                handled += 1
                if handled >= count:
                    done.set()

        app.handler(topic, group=group, **handler_kwargs)(handle)
        broker.consumer(topic, group=group).close()  # subscribe before producing
        sequencer = Sequencer()
        with broker.producer() as producer:
            for i in range(count):
                key = f"k{i % 100}"
                producer.send(topic, i, key=key, headers=sequencer.headers(topic, key))
        started: list[float] = []

        def ready() -> None:
            started.append(time.perf_counter())

        runner = threading.Thread(
            target=app.run, kwargs={"install_signal_handlers": False, "on_ready": ready}
        )
        runner.start()
        if not done.wait(600):
            raise RuntimeError(f"only {handled} of {count} handled")
        elapsed = time.perf_counter() - started[0]
        app.stop()
        runner.join()
    return elapsed / count


def wrapper_only(tmp: Path, calls: int) -> dict[str, float]:
    """Seconds per call of each wrapper around a no-op handler, without a broker."""

    def noop(message: Message) -> None:
        return None

    def message(i: int) -> Message:
        delivery = Delivery("t", b"1", "k", {}, uuid.uuid4().hex, 0.0, 1)
        return Message(delivery, i, None, lambda *a: None)

    out: dict[str, float] = {}
    messages = [message(i) for i in range(calls)]
    start = time.perf_counter()
    for m in messages:
        noop(m)
    out["plain handler"] = (time.perf_counter() - start) / calls
    for name, make in stores(tmp).items():
        wrapped = idempotent(make(), namespace="bench")(noop)
        messages = [message(i) for i in range(calls)]
        start = time.perf_counter()
        for m in messages:
            wrapped(m)
        out[f"idempotent ({name} store)"] = (time.perf_counter() - start) / calls
    checker = SequenceChecker().middleware(noop)
    stamp = Sequencer()
    seq_messages = [
        Message(
            Delivery("t", b"1", "k", stamp.headers("t", "k"), "x", 0.0, 1), 1, None, lambda *a: None
        )
        for _ in range(calls)
    ]
    start = time.perf_counter()
    for m in seq_messages:
        checker(m)
    out["sequence check"] = (time.perf_counter() - start) / calls
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the failing variants would log every failure
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        url = f"sqlite:///{tmp / 'bench.db'}?poll_interval=0.005"
        results: dict[str, list[float]] = {}
        factories = variants(tmp)
        for _ in range(args.repeat):  # interleaved, so drift hits every variant alike
            for name, factory in factories.items():
                results.setdefault(name, []).append(
                    drain(url, args.messages, factory(), fail_first=False)
                )
            failing: dict[str, dict[str, Any]] = {
                "retry, 1 failure each (broker delay)": {
                    "middleware": [retry(RetryPolicy.fixed(0.0), via="broker")]
                },
                "retry, 1 failure each (retry topic)": {
                    "middleware": [retry(RetryPolicy.fixed(0.0), via="topics")]
                },
                "no helper, 1 failure each (nack)": {},
            }
            for name, handler_kwargs in failing.items():
                results.setdefault(name, []).append(
                    drain(url, args.messages, handler_kwargs, fail_first=True)
                )
        plain = statistics.median(results["plain handler"])
        print(f"SQLite backend, {args.messages} messages per run, median of {args.repeat} runs")
        print(f"{'variant':42} {'µs/message':>11} {'overhead µs':>12}")
        for name, values in results.items():
            cost = statistics.median(values)
            print(f"{name:42} {cost * 1e6:11.1f} {(cost - plain) * 1e6:+12.1f}")
        print()
        print(f"wrapper alone, no broker, {args.calls} calls")
        alone = wrapper_only(tmp, args.calls)
        base = alone["plain handler"]
        for name, cost in alone.items():
            print(f"{name:42} {cost * 1e6:11.2f} {(cost - base) * 1e6:+12.2f}")


if __name__ == "__main__":
    main()
