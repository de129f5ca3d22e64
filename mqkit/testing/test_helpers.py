"""The reliability helpers on every backend: idempotency, retry/dead-letter, ordering.

Only the public interface and ``broker.features`` are used, so a new adapter passes these by
passing the pub/sub suite.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import mqkit
from mqkit import App, Handler, Message, Route
from mqkit.cli import main as cli_main
from mqkit.deadletter import (
    ATTEMPT,
    ERROR,
    ERROR_TYPE,
    GROUP,
    ORIGINAL_ID,
    TIME,
    TOPIC,
    TRACEBACK,
    list_dead_letters,
)
from mqkit.helpers import (
    IDEMPOTENCY_KEY,
    OrderedProcessor,
    RetryPolicy,
    SequenceChecker,
    SequencedProducer,
    idempotent,
    retry,
)
from mqkit.testing.stores import KINDS, make_store
from mqkit.testing.util import ARRIVAL, QUIET, assert_quiet, collect


def wait_for(condition: Callable[[], bool], timeout: float = ARRIVAL, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


@contextlib.contextmanager
def running(app: App) -> Iterator[App]:
    """Run ``app`` in a thread until the block ends; the block starts once it is subscribed."""
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            app.run(install_signal_handlers=False, on_ready=ready.set)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="test-app")
    thread.start()
    assert ready.wait(ARRIVAL * 2), "app did not start"
    try:
        if errors:
            raise errors[0]
        yield app
    finally:
        app.stop()
        thread.join(ARRIVAL)
        assert not thread.is_alive(), "app did not stop"
    if errors:
        raise errors[0]


# -- idempotency -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_idempotent_side_effect_once_despite_duplicates_and_lost_acks(
    url: str, topic: str, group: str, kind: str, tmp_path: Path
) -> None:
    """Each order sent twice; each delivery's first ack 'lost' (nacked after the side effect)."""
    orders = 8
    effects: Counter[int] = Counter()
    deliveries: Counter[str] = Counter()
    lock = threading.Lock()

    def lose_first_ack(handler: Handler, route: Route) -> Handler:
        def lossy(message: Message) -> Any:
            result = handler(message)
            with lock:
                deliveries[message.id] += 1
                first = deliveries[message.id] == 1
            if first and message.settled is None:
                message.nack()  # the handler succeeded, but the broker never hears of it
            return result

        return lossy

    with make_store(kind, tmp_path) as store, mqkit.connect(url) as broker:
        app = App(broker=broker)

        @app.handler(
            topic,
            group=group,
            concurrency=2,
            middleware=[
                lose_first_ack,
                idempotent(store, key=lambda m: str(m.value["order"]), busy_delay=0.2),
            ],
        )
        def charge(message: Message) -> None:
            with lock:
                effects[message.value["order"]] += 1

        with running(app), broker.producer() as producer:
            ids = []
            for n in range(orders):
                for _ in range(2):  # the producer sends every order twice
                    ids.append(producer.send(topic, {"order": n}, key=f"k{n % 3}"))
            producer.flush()
            wait_for(
                lambda: all(deliveries[i] >= 2 for i in ids),
                what="every message delivered again after its lost ack",
            )
            time.sleep(QUIET / 3)  # let stragglers arrive: they must not run the side effect
        assert effects == {n: 1 for n in range(orders)}, effects
        assert len(ids) == 2 * orders


@pytest.mark.parametrize("kind", KINDS)
def test_idempotent_side_effect_once_when_consumer_closes_before_ack(
    url: str, topic: str, group: str, kind: str, tmp_path: Path
) -> None:
    """Producer duplicates marked by header; a consumer dies before acking what it processed."""
    effects: Counter[str] = Counter()

    def charge(message: Message) -> None:
        effects[message.value] += 1

    with make_store(kind, tmp_path) as store, mqkit.connect(url) as broker:
        independent = broker.features.independent_keys
        wrapped = idempotent(store, namespace=group)(charge)  # default key: the header, else id
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            ids = [
                producer.send(topic, f"order-{n}", headers={IDEMPOTENCY_KEY: f"order-{n}"})
                for n in range(6)
                for _ in range(2)
            ]
        if independent:
            taken = collect(first, 12, ack=False)
            assert len(taken) == 12
        else:  # one unsettled message per partition: process what the partitions hand out
            taken = collect(first, 12, ack=False, deadline=QUIET * 2)
            assert taken
        for message in taken:
            wrapped(message)
        first.close()  # processed, never acked: all come back, with the rest of the twelve
        second = broker.consumer(topic, group=group)
        again: list[Message] = []
        end = time.monotonic() + ARRIVAL
        while len(again) < 12 and time.monotonic() < end:
            received = second.receive(timeout=1.0)
            if received is not None:
                again.append(received)
                wrapped(received)
                received.ack()
        assert sorted(m.id for m in again) == sorted(ids)
        assert_quiet(second)
    assert effects == {f"order-{n}": 1 for n in range(6)}


# -- retry and dead letters ------------------------------------------------------------------


VIAS = ("auto", "topics")


@pytest.mark.parametrize("via", VIAS)
def test_retry_fails_twice_then_succeeds_on_attempt_three(
    url: str, topic: str, group: str, via: str
) -> None:
    calls: list[tuple[str, int]] = []
    done: list[tuple[str, int, str, str]] = []
    policy = RetryPolicy.exponential(0.05, multiplier=2, max_attempts=5, jitter=0.2)
    with mqkit.connect(url) as broker:
        app = App(broker=broker)
        helper = retry(policy, via=via)  # type: ignore[arg-type]

        @app.handler(topic, group=group, middleware=[helper])
        def flaky(message: Message) -> None:
            calls.append((message.value, message.attempt))
            if message.value == "flaky" and message.attempt < 3:
                raise ConnectionError(f"down on attempt {message.attempt}")
            done.append((message.value, message.attempt, message.topic, message.id))

        with running(app), broker.producer() as producer:
            flaky_id = producer.send(topic, "flaky", key="k1")
            steady_id = producer.send(topic, "steady", key="k2")
            producer.flush()
            wait_for(lambda: len(done) == 2, what="both messages processed")
            time.sleep(QUIET / 3)
        assert sorted(done) == [
            ("flaky", 3, topic, flaky_id),
            ("steady", 1, topic, steady_id),
        ]
        assert [a for v, a in calls if v == "flaky"] == [1, 2, 3]
        assert helper.stats.retried == 2 and helper.stats.dead_lettered == 0
        if via == "topics" or not broker.features.delayed_redelivery:
            assert helper.stats.relayed == 2
        assert list_dead_letters(broker, group, wait=0.3, first_wait=0.3) == []


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli_main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("via", VIAS)
def test_always_failing_gives_one_dead_letter_and_replay_processes_it(
    url: str, topic: str, group: str, via: str
) -> None:
    attempts: list[int] = []
    processed: list[tuple[str, int, str, str]] = []
    broken = threading.Event()
    broken.set()
    policy = RetryPolicy.fixed(0.05, max_attempts=3)
    with mqkit.connect(url) as broker:
        app = App(broker=broker)
        helper = retry(policy, via=via)  # type: ignore[arg-type]

        @app.handler(topic, group=group, middleware=[helper])
        def always_failing(message: Message) -> None:
            if broken.is_set():
                attempts.append(message.attempt)
                raise RuntimeError(f"cannot process {message.value['n']}")
            processed.append((message.value["n"], message.attempt, message.topic, message.id))

        with running(app), broker.producer() as producer:
            sent = producer.send(topic, {"n": "x1"}, key="poison", headers={"trace": "t-1"})
            producer.flush()
            wait_for(lambda: helper.stats.dead_lettered == 1, what="the dead letter")
            time.sleep(QUIET / 3)
        assert attempts == [1, 2, 3]
        assert helper.stats.dead_lettered == 1

        # Exactly one dead letter, with the documented headers; listing does not remove it.
        for _ in range(2):
            [item] = list_dead_letters(broker, group, wait=0.5)
        dead = item.message
        assert json.loads(dead.body) == {"n": "x1"}
        assert dead.key == "poison"
        headers = dict(dead.headers)
        assert headers["trace"] == "t-1"
        assert headers[TOPIC] == topic
        assert headers[GROUP] == group
        assert headers[ORIGINAL_ID] == sent
        assert headers[ATTEMPT] == "3"
        assert headers[ERROR_TYPE] == "RuntimeError"
        assert headers[ERROR] == "cannot process x1"
        traceback = str(headers[TRACEBACK])
        assert "always_failing" in traceback and "RuntimeError" in traceback
        assert abs(float(headers[TIME]) - time.time()) < 120
        assert not any(k.startswith("mqkit-retry-") for k in headers)

        listing = _cli("dlq", "list", group, "--url", url, "--json", "--wait", "0.5")
        [record] = [json.loads(line) for line in listing.splitlines()]
        assert (record["id"], record["topic"], record["attempt"]) == (sent, topic, 3)
        assert record["value"] == {"n": "x1"}

        # The bug is fixed; replay sends it back to this group only, with a fresh count.
        broken.clear()
        with running(app):
            out = _cli("dlq", "replay", group, "--url", url, "--wait", "0.5")
            assert out.startswith(sent)
            wait_for(lambda: len(processed) == 1, what="the replayed message")
            time.sleep(QUIET / 3)
        assert processed == [("x1", 1, topic, sent)]
        assert list_dead_letters(broker, group, wait=0.3, first_wait=0.3) == []


def test_non_retryable_errors_go_straight_to_the_dead_letter_topic(
    url: str, topic: str, group: str
) -> None:
    calls: list[int] = []
    policy = RetryPolicy.fixed(0.05, max_attempts=5, dead_letter_on=(ValueError,))
    with mqkit.connect(url) as broker:
        app = App(broker=broker)
        helper = retry(policy)

        @app.handler(topic, group=group, middleware=[helper])
        def strict(message: Message) -> None:
            calls.append(message.attempt)
            raise ValueError("malformed order")

        with running(app), broker.producer() as producer:
            producer.send(topic, {"bad": True})
            producer.flush()
            wait_for(lambda: helper.stats.dead_lettered == 1, what="the dead letter")
            time.sleep(QUIET / 3)
        assert calls == [1]
        [item] = list_dead_letters(broker, group, wait=0.5)
        assert item.info.attempt == 1 and item.info.error_type == "ValueError"


# -- ordering ----------------------------------------------------------------------------------


def stop_when(event: threading.Event, processor: OrderedProcessor, timeout: float) -> None:
    event.wait(timeout)
    processor.stop()


def test_ordered_pool_keeps_key_order_and_uses_every_worker(
    url: str, topic: str, group: str
) -> None:
    """2,000 messages over 100 keys, 8 workers: per-key order, keys side by side, every worker
    used."""
    total, keys, workers = 2_000, 100, 8
    seen: dict[str, list[int]] = defaultdict(list)
    running_keys: set[str] = set()
    overlaps: list[str] = []
    lock = threading.Lock()
    busy = 0
    peak = 0
    finished = threading.Event()

    def handle(message: Message) -> None:
        nonlocal busy, peak
        key = message.key or ""
        with lock:
            if key in running_keys:
                overlaps.append(key)
            running_keys.add(key)
            busy += 1
            peak = max(peak, busy)
        time.sleep(0.0002)  # a handler that waits on I/O
        with lock:
            busy -= 1
            running_keys.discard(key)
            seen[key].append(message.value)
            if sum(len(v) for v in seen.values()) >= total:
                finished.set()

    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(total):
                producer.send(topic, i // keys, key=f"key-{i % keys}")
        processor = OrderedProcessor(consumer, handle, workers=workers)
        stopper = threading.Thread(target=stop_when, args=(finished, processor, ARRIVAL * 4))
        stopper.start()
        stats = processor.run()
        stopper.join()
        consumer.close()
    assert finished.is_set(), f"only {sum(len(v) for v in seen.values())} of {total} processed"
    assert not overlaps, f"keys processed concurrently: {overlaps[:5]}"
    assert sorted(seen) == sorted(f"key-{k}" for k in range(keys))
    for key, values in seen.items():
        assert values == list(range(total // keys)), f"{key} out of order"
    assert all(n > 0 for n in stats.per_worker), stats.per_worker
    # Keys ran side by side (how many at once depends on how fast the backend delivers) and
    # never more than the pool.
    assert 2 <= peak <= workers and 2 <= stats.max_busy <= workers, (peak, stats.max_busy)
    assert stats.max_in_flight <= processor.max_in_flight


def test_ordered_pool_redelivers_a_failed_message_before_its_successors(
    url: str, topic: str, group: str
) -> None:
    keys, per_key = 4, 25
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
    lock = threading.Lock()
    finished = threading.Event()
    failed_once: set[tuple[str, int]] = set()

    def handle(message: Message) -> None:
        key, value = message.key or "", message.value
        if value % 10 == 3 and (key, value) not in failed_once:
            failed_once.add((key, value))
            raise RuntimeError("transient")
        with lock:
            seen[key].append((value, message.attempt))
            if sum(len(v) for v in seen.values()) >= keys * per_key:
                finished.set()

    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(per_key):
                for k in range(keys):
                    producer.send(topic, i, key=f"key-{k}")
        processor = OrderedProcessor(consumer, handle, workers=4)
        stopper = threading.Thread(target=stop_when, args=(finished, processor, ARRIVAL * 2))
        stopper.start()
        stats = processor.run()
        stopper.join()
        consumer.close()
        in_order = broker.features.key_order_on_nack
    assert finished.is_set()
    assert stats.failed == keys * 3
    for key, values in seen.items():
        numbers = [v for v, _ in values]
        assert sorted(numbers) == list(range(per_key)), f"{key} lost or duplicated messages"
        if in_order:
            assert numbers == list(range(per_key)), f"{key} out of order: {numbers}"
            assert all(a >= 2 for v, a in values if v % 10 == 3)


def test_app_workers_option_runs_a_per_key_pool(url: str, topic: str, group: str) -> None:
    total, keys = 400, 20
    seen: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()
    with mqkit.connect(url) as broker:
        app = App(broker=broker)

        @app.handler(topic, group=group, workers=4)
        def handle(message: Message) -> None:
            with lock:
                seen[message.key or ""].append(message.value)

        with running(app), broker.producer() as producer:
            for i in range(total):
                producer.send(topic, i // keys, key=f"k{i % keys}")
            producer.flush()
            wait_for(lambda: sum(len(v) for v in seen.values()) >= total, what="all messages")
        assert app.stats(group).processed == total
    for key, values in seen.items():
        assert values == list(range(total // keys)), key


def test_acks_out_of_receive_order_are_kept(url: str, topic: str, group: str) -> None:
    """The pool acks keys in completion order; a backend must not lose what is left unacked."""
    with mqkit.connect(url) as broker:
        independent = broker.features.independent_keys
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(8):
                producer.send(topic, i, key=f"k{i}")
        if independent:
            got = collect(first, 8, ack=False)
            assert len(got) == 8
        else:
            # Keys share partitions, one unsettled message each: hold what they hand out, and
            # once those are acked take (and ack) what waited behind them.
            got = collect(first, 8, ack=False, deadline=QUIET * 2)
            assert len(got) >= 3, "the eight keys should spread over several partitions"
        held = got[2]
        for message in reversed(got):
            if message is not held:
                message.ack()
        if not independent:  # all but what waits behind the held one on its partition
            collect(first, 8 - len(got), deadline=QUIET * 2)
        first.close()
        second = broker.consumer(topic, group=group)
        again = collect(second, 1, deadline=ARRIVAL)
        assert [m.id for m in again] == [held.id]


def test_sequence_check_sees_an_in_order_stream_as_ok(url: str, topic: str, group: str) -> None:
    checker = SequenceChecker()
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as raw:
            producer = SequencedProducer(raw)
            for i in range(30):
                producer.send(topic, i, key=f"k{i % 3}")
        for message in collect(consumer, 30):
            checker.observe(message)
    assert checker.counts["ok"] == 30, checker.counts
    assert checker.missing() == {}
