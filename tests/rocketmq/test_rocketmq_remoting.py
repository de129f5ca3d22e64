"""``rocketmq+remoting://`` against a real Apache RocketMQ (``adapters/rocketmq/ci/broker``)
through the native librocketmq of ``mqkit-rocketmq[remoting-bundled]``: what the driver
promises beyond the conformance suite.

These tests belong to the ``remoting`` test run (``tests/backends.py``): ``scripts/test`` runs
them in ``.venv-remoting``, whose ``rocketmq`` package is the 4.x binding. The main run
deselects them.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest

import mqkit
from mqkit import envelope
from mqkit.testing.util import ARRIVAL, assert_quiet, collect
from tests.backends import env_var

ENV = env_var("rocketmq_remoting")
pytestmark = pytest.mark.run("remoting")


@pytest.fixture(scope="module")
def remoting_url() -> str:
    url = os.environ.get(ENV, "").strip()
    if url:
        return url
    if os.environ.get("CI"):
        raise RuntimeError(f"{ENV} is not set in CI: adapters/rocketmq/ci/broker prints it")
    pytest.skip(f"set {ENV} (adapters/rocketmq/ci/broker start prints it)")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _namesrv(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0].split("@")[-1].split(",")[0]


def test_orderly_consumer_retries_locally_in_key_order(remoting_url: str) -> None:
    """A nacked message comes back to the same consumer at once (or after its delay), with
    ``attempt`` + 1, before the later messages of its queue; other queues go on meanwhile."""
    topic, group = _name("orderly"), _name("g")
    keys, per_key = 4, 8
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
    nacked_at: dict[str, float] = {}
    back_after: dict[str, float] = {}
    with mqkit.connect(remoting_url) as broker:
        assert broker.features.key_order_on_nack and broker.features.delayed_redelivery
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for n in range(per_key):
                for k in range(keys):
                    producer.send(topic, n, key=f"k{k}")
        end = time.monotonic() + ARRIVAL
        while sum(len(v) for v in seen.values()) < keys * (per_key + 1):
            assert time.monotonic() < end, dict(seen)
            message = consumer.receive(timeout=1.0)
            if message is None:
                continue
            key = message.key or ""
            seen[key].append((message.value, message.attempt))
            if message.value == 3 and message.attempt == 1:
                nacked_at[key] = time.monotonic()
                message.nack(delay=1.0 if key == "k0" else 0.0)
                continue
            if message.value == 3:
                back_after[key] = time.monotonic() - nacked_at[key]
            message.ack()
        assert_quiet(consumer)
    for k in range(keys):
        assert seen[f"k{k}"] == [
            (0, 1), (1, 1), (2, 1), (3, 1), (3, 2), (4, 1), (5, 1), (6, 1), (7, 1)
        ], f"k{k}"
    assert back_after["k0"] >= 0.9, "nack(delay=1.0) came back early"
    assert max(back_after[f"k{k}"] for k in range(1, keys)) < 1.0, back_after


def test_the_concurrent_push_consumer_is_refused_with_the_reason(remoting_url: str) -> None:
    """librocketmq's concurrent consumer settles a pulled batch as a whole: per-message acks
    cannot be kept on it, so ``orderly=false`` is a configuration error that says why."""
    with pytest.raises(mqkit.ConfigError, match="settles it as a whole"):
        mqkit.connect(remoting_url, orderly=False)


def test_given_back_messages_keep_their_count_within_a_connection(remoting_url: str) -> None:
    """RocketMQ counts no local retries; a closed orderly consumer's messages come back to the
    next consumer of the same connection with the deliveries the application saw, and those it
    never saw do not count. Another connection starts again at attempt 1."""
    topic, group = _name("count"), _name("g")
    with mqkit.connect(remoting_url) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            held_id = producer.send(topic, "held", key="a")
            producer.send(topic, "behind", key="a")
        [held] = collect(first, 1, ack=False)
        assert (held.id, held.attempt) == (held_id, 1)
        held.nack()
        [held] = collect(first, 1, ack=False)
        assert (held.id, held.attempt) == (held_id, 2)
        first.close()  # "behind" was never handed out
        second = broker.consumer(topic, group=group)
        [held] = collect(second, 1, ack=False)
        assert (held.id, held.attempt) == (held_id, 3)
        assert_quiet(second)  # "behind" waits for "held", its queue's head
        held.ack()
        [behind] = collect(second, 1, ack=False)
        assert (behind.value, behind.attempt) == ("behind", 1)
        second.close()
    with mqkit.connect(remoting_url) as other:
        third = other.consumer(topic, group=group)
        [behind] = collect(third, 1)
        assert (behind.value, behind.attempt) == ("behind", 1)


def test_a_new_group_starts_at_the_end_and_keeps_its_position(remoting_url: str) -> None:
    """A group new to a topic gets what is sent from ``consumer()`` on, not the topic's past;
    once it has a position, messages sent while no member runs wait for the next one."""
    topic, group = _name("position"), _name("g")
    with mqkit.connect(remoting_url) as broker:
        with broker.producer() as producer:
            producer.send(topic, "before the group")
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, "after")
        assert [m.value for m in collect(consumer, 1)] == ["after"]
        assert_quiet(consumer)
        consumer.close()
        with broker.producer() as producer:
            for n in range(8):
                producer.send(topic, f"while away {n}")
        consumer = broker.consumer(topic, group=group)
        got = collect(consumer, 8)
        assert sorted(m.value for m in got) == [f"while away {n}" for n in range(8)]
        assert_quiet(consumer)


def test_close_gives_back_every_queue_at_once(remoting_url: str) -> None:
    """A consumer holding a message on every queue closes; the next member gets all of them
    within seconds. (librocketmq 1.0.1 leaves one queue per broker locked at shutdown, which
    would keep its message from the group until the broker's lock expires after 60 s; the
    adapter unlocks its queues itself.)"""
    topic, group = _name("unlock"), _name("g")
    with mqkit.connect(remoting_url) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            ids = [producer.send(topic, n) for n in range(8)]  # round robin: one per queue
        held = collect(first, 8, ack=False)
        assert sorted(m.id for m in held) == sorted(ids)
        first.close()
        second = broker.consumer(topic, group=group)
        started = time.monotonic()
        again = collect(second, 8, deadline=10.0)
        assert sorted(m.id for m in again) == sorted(ids), f"{len(again)} of 8 in 10 s"
        assert time.monotonic() - started < 10.0


def test_close_returns_promptly_while_the_group_rebalances(remoting_url: str) -> None:
    """The second member leaves, and the first closes while it takes back the queues it gave
    the second one: librocketmq's rebalance waits for the long polls it still had out on them
    (a broker holds a poll 15-20 s) and its shutdown waits for the rebalance. ``close()``
    returns once the consumer has left its group."""
    topic, group = _name("leave"), _name("g")
    with mqkit.connect(remoting_url) as broker:
        members = [broker.consumer(topic, group=group) for _ in range(2)]
        with broker.producer() as producer:
            for n in range(16):
                producer.send(topic, n, key=f"k{n % 4}")
        got: list[Any] = []
        lock = threading.Lock()

        def drain(consumer: Any) -> None:
            while len(got) < 16:
                message = consumer.receive(timeout=0.2)
                if message is not None:
                    message.ack()
                    with lock:
                        got.append(message.value)

        threads = [threading.Thread(target=drain, args=(m,)) for m in members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(ARRIVAL)
        assert sorted(got) == list(range(16))
        took = []
        for member in reversed(members):
            started = time.monotonic()
            member.close()
            took.append(time.monotonic() - started)
            time.sleep(0.05)  # the other member is told, and starts to rebalance
        assert max(took) < 3.0, took


def test_receive_with_zero_timeout_returns_a_message_already_held(remoting_url: str) -> None:
    """``receive(timeout=0)`` hands out a message the native consumer already handed over (it
    used to return None without looking)."""
    topic, group = _name("zero"), _name("g")
    with mqkit.connect(remoting_url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            sent = producer.send(topic, "held")
        got = None
        end = time.monotonic() + ARRIVAL
        while got is None and time.monotonic() < end:
            got = consumer.receive(timeout=0)
            if got is None:
                time.sleep(0.05)
        assert got is not None and got.id == sent
        got.ack()
        assert_quiet(consumer)


def test_bodies_with_zero_bytes_and_compressed_bodies_arrive_whole(remoting_url: str) -> None:
    """The C API hands out a body as a C string; the adapter reads its full length. Bodies over
    4 KiB travel zlib-compressed and arrive decompressed."""
    topic, group = _name("bodies"), _name("g")
    bodies = [b"\x00", b"\x00\x01\x00", bytes(range(256)) * 64, b"\x00" * 300_000]
    with mqkit.connect(remoting_url, serializer="bytes") as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for body in bodies:
                producer.send(topic, body, key="k")
        assert [m.body for m in collect(consumer, len(bodies))] == bodies


def test_an_incompressible_body_of_the_declared_maximum_arrives_whole(remoting_url: str) -> None:
    """``features.max_body_size`` holds for bodies zlib cannot shrink (librocketmq compresses
    bodies over 4 KiB, and the broker counts the properties too): 4 MiB of random bytes was
    refused as "No route info of this topic"."""
    topic, group = _name("largest"), _name("g")
    with mqkit.connect(remoting_url, serializer="bytes") as broker:
        size = broker.features.max_body_size
        body = os.urandom(size)
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, body, key="k" * 70, headers={"trace": "t" * 200})
        [got] = collect(consumer, 1)
        assert (len(got.body), got.body == body, got.key) == (size, True, "k" * 70)


def test_messages_of_plain_rocketmq_clients(remoting_url: str) -> None:
    """A plain producer's message arrives with its body, no key and no headers (the C API
    cannot list a message's properties), the broker's message id as id (not its message key,
    which need not be unique); a plain consumer reads mqkit's message with the key, headers and
    id as properties."""
    binding: Any = importlib.import_module("rocketmq.client")
    namesrv = _namesrv(remoting_url)
    topic, group = _name("plain"), _name("g")
    with mqkit.connect(remoting_url) as broker:
        consumer = broker.consumer(topic, group=group)
        producer = binding.Producer(_name("plain-producer"))
        producer.set_namesrv_addr(namesrv)
        producer.start()
        try:
            message = binding.Message(topic)
            message.set_body(b'{"from": "plain"}')
            message.set_keys("order-42")
            message.set_property("trace", "t-1")
            result = producer.send_sync(message)
        finally:
            producer.shutdown()
        [got] = collect(consumer, 1)
        assert got.value == {"from": "plain"}
        assert (got.key, dict(got.headers), got.id, got.attempt) == (None, {}, result.msg_id, 1)

        # The reverse direction, on a topic of its own: a plain consumer of a new group.
        topic, group = _name("plain"), _name("plain-group")
        admin: Any = importlib.import_module("mqkit_rocketmq.admin")
        admin.ensure_topic(namesrv, topic)
        admin.ensure_group(namesrv, group)
        admin.start_group_at_end(namesrv, group, topic)
        received: list[Any] = []
        arrived = threading.Event()

        def on_message(raw: Any) -> None:
            received.append(
                (raw.body, raw.keys, raw.get_property(envelope.KEY), raw.get_property("trace"))
            )
            arrived.set()

        plain = binding.PushConsumer(group)
        plain.set_namesrv_addr(namesrv)
        plain.subscribe(topic, on_message)
        plain.start()
        try:
            with broker.producer() as mqkit_producer:
                sent = mqkit_producer.send(
                    topic, {"to": "plain"}, key="k-1", headers={"trace": "t-2"}
                )
            assert arrived.wait(ARRIVAL)
            time.sleep(0.5)
        finally:
            plain.shutdown()
        assert received == [(b'{"to":"plain"}', sent.encode(), b'"k-1"', b"t-2")]
