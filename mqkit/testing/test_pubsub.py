"""The conformance suite: every backend, embedded or broker, must pass all of it unchanged.

Tests read backend differences from ``broker.features`` instead of skipping silently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

import mqkit
from mqkit import ClosedError, DecodeError, MessageStateError, envelope
from mqkit.errors import MessageTooLarge
from mqkit.testing.util import ARRIVAL, assert_quiet, collect, drain_concurrently


def test_round_trip_keeps_value_key_headers_and_metadata(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            before = time.time()
            sent_id = producer.send(
                topic, {"order": 1, "items": ["a", "b"]}, key="order-1", headers={"trace": "abc"}
            )
            producer.flush(timeout=ARRIVAL)
        [message] = collect(consumer, 1, ack=False)
        assert message.value == {"order": 1, "items": ["a", "b"]}
        assert message.body == b'{"order":1,"items":["a","b"]}'
        assert message.key == "order-1"
        assert dict(message.headers) == {"trace": "abc"}
        assert message.id == sent_id
        assert message.topic == topic
        assert message.attempt == 1
        assert message.error is None
        assert abs(message.timestamp - before) < 60
        message.ack()
        assert_quiet(consumer)


def test_messages_without_key_or_headers(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, [1, 2, 3])
        [message] = collect(consumer, 1)
        assert message.value == [1, 2, 3]
        assert message.key is None
        assert dict(message.headers) == {}


def test_two_groups_each_get_every_message(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        first = broker.consumer(topic, group=group + "-a")
        second = broker.consumer(topic, group=group + "-b")
        with broker.producer() as producer:
            for i in range(20):
                producer.send(topic, i)
        assert sorted(m.value for m in collect(first, 20)) == list(range(20))
        assert sorted(m.value for m in collect(second, 20)) == list(range(20))
        assert_quiet(first)
        assert_quiet(second)


def test_members_of_one_group_share_without_overlap(url: str, topic: str, group: str) -> None:
    total = 60
    received: list[list[int]] = [[], []]
    with mqkit.connect(url) as broker:
        members = [broker.consumer(topic, group=group) for _ in received]

        def produce() -> None:
            with broker.producer() as producer:
                for i in range(total):
                    producer.send(topic, i, key=f"k{i % 12}")

        # A slow handler (10 ms), so the other member gets its share.
        drain_concurrently(
            members, total, produce, lambda n, m: received[n].append(m.value), work=0.01
        )
    a, b = received
    assert sorted(a + b) == list(range(total)), "every message once across the group"
    assert not set(a) & set(b), "no message went to both members"
    assert a and b, f"both members got a share (a={len(a)}, b={len(b)})"


def test_nack_redelivers_with_attempt_incremented(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            sent = producer.send(topic, "retry me", headers={"h": "v"})
        [first] = collect(consumer, 1, ack=False)
        assert (first.id, first.attempt) == (sent, 1)
        first.nack()
        [second] = collect(consumer, 1, ack=False)
        assert (second.id, second.attempt, second.value) == (sent, 2, "retry me")
        assert dict(second.headers) == {"h": "v"}
        second.nack()
        [third] = collect(consumer, 1, ack=False)
        assert (third.id, third.attempt) == (sent, 3)
        third.ack()
        assert_quiet(consumer)


def test_nack_without_requeue_drops_the_message(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            # One key: send order is kept per key only (unkeyed messages may take different
            # queues or partitions, e.g. on RocketMQ, and arrive in either order).
            producer.send(topic, "poison", key="k")
            producer.send(topic, "fine", key="k")
        [poison] = collect(consumer, 1, ack=False)
        assert poison.value == "poison"
        poison.nack(requeue=False)
        [fine] = collect(consumer, 1)
        assert fine.value == "fine"
        assert_quiet(consumer)


def test_delayed_nack_waits_before_redelivery(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        if not broker.features.delayed_redelivery:
            pytest.skip("backend declares delayed_redelivery=False (retry topics stand in)")
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, "later")
        [message] = collect(consumer, 1, ack=False)
        nacked_at = time.monotonic()
        message.nack(delay=2.0)
        [again] = collect(consumer, 1)
        assert again.id == message.id and again.attempt == 2
        assert time.monotonic() - nacked_at >= 1.5


def test_unacked_messages_come_back_after_consumer_closes(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            ids = [producer.send(topic, i) for i in range(5)]
        taken = collect(first, 3, ack=False)
        assert len(taken) == 3
        first.close()
        second = broker.consumer(topic, group=group)
        again = collect(second, 5)
        assert sorted(m.id for m in again) == sorted(ids)
        assert_quiet(second)


def test_acked_messages_do_not_come_back_after_close(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(6):
                producer.send(topic, i)
        done = collect(first, 6)
        assert sorted(m.value for m in done) == list(range(6))
        first.close()
        second = broker.consumer(topic, group=group)
        assert_quiet(second, wait=3.0)


def test_batches_received_and_acked_at_once_do_not_come_back(
    url: str, topic: str, group: str
) -> None:
    with mqkit.connect(url) as broker:
        first = broker.consumer(topic, group=group)
        other = broker.consumer(topic, group=group + "-other")
        with broker.producer() as producer:
            ids = [producer.send(topic, i) for i in range(10)]
        acked: list[mqkit.Message] = []
        end = time.monotonic() + ARRIVAL
        while len(acked) < 6 and time.monotonic() < end:
            batch = first.receive_many(6 - len(acked), timeout=1.0)
            assert len(batch) <= 6 - len(acked)
            first.ack_many(batch)
            assert all(message.settled == "ack" for message in batch)
            acked += batch
        assert len(acked) == 6
        with pytest.raises(MessageStateError):
            first.ack_many(acked[:1])
        foreign = collect(other, 1, ack=False)
        with pytest.raises(ValueError, match="not received from this consumer"):
            first.ack_many(foreign)
        assert foreign[0].settled is None
        first.ack_many([])
        held = collect(first, 1, ack=False)
        assert len(held) == 1
        first.close()
        with pytest.raises(ClosedError):
            first.ack_many(held)  # given back on close: the group gets it again
        second = broker.consumer(topic, group=group)
        rest = collect(second, 4)
        assert sorted(m.id for m in rest) == sorted(set(ids) - {m.id for m in acked})
        assert_quiet(second)
        other.close()


_KILLED_CONSUMER = """
import sys, time, mqkit
url, topic, group, acks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
broker = mqkit.connect(url)
consumer = broker.consumer(topic, group=group)
print("subscribed", flush=True)
seen = 0
while seen < acks + 3:
    message = consumer.receive(timeout=30)
    if message is None:
        sys.exit("no message within 30 s")
    if seen < acks:
        message.ack()
        print("acked", message.value, flush=True)
    seen += 1
print("holding", flush=True)
time.sleep(300)
"""


def test_killed_consumer_process_loses_nothing(
    url: str, topic: str, group: str, tmp_path: Path
) -> None:
    with mqkit.connect(url) as broker:
        if not broker.features.persistent:
            pytest.skip("backend lives inside one process (features.persistent=False)")
        crash_hold = broker.features.crash_hold
    script = tmp_path / "consumer.py"
    script.write_text(_KILLED_CONSUMER)
    child = subprocess.Popen(
        [sys.executable, str(script), url, topic, group, "4"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "subscribed"
        with mqkit.connect(url) as broker, broker.producer() as producer:
            for i in range(10):
                producer.send(topic, i)
        acked = []
        for line in child.stdout:
            if line.startswith("acked"):
                acked.append(int(line.split()[1]))
            if line.startswith("holding"):
                break
        assert len(acked) == 4
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        rest = collect(consumer, 6, deadline=ARRIVAL * 2 + crash_hold)
        assert sorted(m.value for m in rest) == sorted(set(range(10)) - set(acked))
        assert_quiet(consumer)


def test_per_key_order_within_a_group(url: str, topic: str, group: str) -> None:
    keys, per_key = 6, 30
    seen: dict[str, list[int]] = defaultdict(list)
    with mqkit.connect(url) as broker:
        members = [broker.consumer(topic, group=group) for _ in range(2)]

        def produce() -> None:
            with broker.producer() as producer:
                for seq in range(per_key):
                    for k in range(keys):
                        producer.send(topic, seq, key=f"key-{k}")

        drain_concurrently(
            members,
            keys * per_key,
            produce,
            lambda n, m: seen[m.key or ""].append(m.value),
            work=0.001,
        )
    assert sorted(seen) == [f"key-{k}" for k in range(keys)]
    for key, values in seen.items():
        assert values == list(range(per_key)), f"{key} out of order: {values}"


def test_nack_keeps_key_order(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        if not broker.features.key_order_on_nack:
            pytest.skip("backend declares key_order_on_nack=False")
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(5):
                producer.send(topic, i, key="same")
        order: list[tuple[int, int]] = []
        nacked = False
        end = time.monotonic() + ARRIVAL
        while len(order) < 6 and time.monotonic() < end:
            message = consumer.receive(timeout=1.0)
            if message is None:
                continue
            order.append((message.value, message.attempt))
            if message.value == 2 and not nacked:
                nacked = True
                message.nack()
            else:
                message.ack()
        assert order == [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1), (4, 1)]


def test_binary_payload_round_trips(url: str, topic: str, group: str) -> None:
    body = bytes(range(256)) * 4
    with mqkit.connect(url, serializer="bytes") as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, body)
            producer.send(topic, b"")
        got = collect(consumer, 2)
        assert sorted((m.value for m in got), key=len) == [b"", body]


def test_one_mebibyte_payload_round_trips(url: str, topic: str, group: str) -> None:
    body = os.urandom(1 << 20)
    with mqkit.connect(url, serializer="bytes") as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, body, key="big")
        [message] = collect(consumer, 1)
        assert message.body == body
        assert message.key == "big"


def test_unicode_headers_and_key_round_trip(url: str, topic: str, group: str) -> None:
    headers = {"ключ": "значение ✓", "emoji": "🚀 ünïcødé", "cjk-名前": "値", "empty": ""}
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, {"text": "héllo 世界"}, key="clé-🔑", headers=headers)
        [message] = collect(consumer, 1)
        assert dict(message.headers) == headers
        assert message.key == "clé-🔑"
        assert message.value == {"text": "héllo 世界"}


def test_envelope_rule_is_the_same_on_every_backend(url: str, topic: str, group: str) -> None:
    """mqkit's own names are refused, the helpers' fields and every other name arrive as sent,
    and a body above ``features.max_body_size`` is refused before it reaches the broker."""
    headers = {
        envelope.RETRY_ATTEMPTS: "2",
        envelope.ORIGIN_ID: "original",
        "x-mqkit-key": "not ours",
        "JMSType": "a name ActiveMQ reserves",
        "message-id": "a header, not the transport's field",
    }
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer(serializer="bytes") as producer:
            for name in (envelope.ID, envelope.KEY, envelope.TIMESTAMP, "mqkit-other"):
                with pytest.raises(ValueError, match="reserved prefix"):
                    producer.send(topic, b"x", headers={name: "v"})
            with pytest.raises(MessageTooLarge):
                producer.send(topic, b"x" * (broker.features.max_body_size + 1))
            producer.send(topic, b"kept", key="k", headers=headers)
        [message] = collect(consumer, 1)
        assert message.body == b"kept" and message.key == "k"
        assert dict(message.headers) == headers


def test_undecodable_payload_is_flagged_not_lost(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer(serializer="bytes") as raw, broker.producer() as js:
            # labelled JSON, so the consumer must decode it as JSON (and fail)
            raw.send(topic, b"\xff\xfe not json", key="k", content_type="application/json")
            raw.flush()
            js.send(topic, {"ok": True}, key="k")
        bad, good = collect(consumer, 2)
        assert isinstance(bad.error, DecodeError)
        assert bad.body == b"\xff\xfe not json"
        with pytest.raises(DecodeError):
            _ = bad.value
        assert good.error is None and good.value == {"ok": True}


def test_closed_objects_raise_clear_errors(url: str, topic: str, group: str) -> None:
    broker = mqkit.connect(url)
    producer = broker.producer()
    consumer = broker.consumer(topic, group=group)
    producer.send(topic, 1)
    producer.close()
    producer.close()  # idempotent
    with pytest.raises(ClosedError, match="producer"):
        producer.send(topic, 2)
    [message] = collect(consumer, 1, ack=False)
    message.ack()
    with pytest.raises(MessageStateError):
        message.ack()
    consumer.close()
    with pytest.raises(ClosedError, match="consumer"):
        consumer.receive(timeout=0)
    broker.close()
    with pytest.raises(ClosedError, match="broker"):
        broker.producer()


def test_close_from_another_thread_ends_a_blocking_receive(
    url: str, topic: str, group: str
) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        timer = threading.Timer(0.5, consumer.close)
        timer.start()
        started = time.monotonic()
        assert list(consumer) == []
        assert time.monotonic() - started < 5
        timer.join()


def test_flush_confirms_a_burst(url: str, topic: str, group: str) -> None:
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        producer = broker.producer()
        ids = {producer.send(topic, {"n": i}, key=f"k{i % 7}") for i in range(500)}
        producer.flush(timeout=ARRIVAL)
        producer.close()
        got = collect(consumer, 500, deadline=ARRIVAL * 2)
        assert {m.id for m in got} == ids
        assert len(got) == 500


def test_the_example_user_script_passes_by_changing_only_the_url(url: str) -> None:
    script = Path(__file__).with_name("roundtrip.py")
    if url.startswith("memory://"):  # in-process only: run it here instead of in a child
        import runpy

        runpy.run_path(str(script), run_name="roundtrip").get("main", print)(url)
        return
    done = subprocess.run(
        [sys.executable, "-m", "mqkit.testing.roundtrip", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK")
