"""Consumer groups: partition count, rebalancing without losing or repeating acked work."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import mqkit
from mqkit import envelope
from mqkit.testing.util import assert_quiet, collect
from tests.kafka.conftest import committed
from tests.kafka.test_drivers import DRIVERS, with_driver


def test_topics_are_created_with_the_configured_partition_count(
    kafka_url: str, admin: Any, topic: str
) -> None:
    with mqkit.connect(kafka_url, partitions=5) as broker, broker.producer() as producer:
        producer.send(topic, 1)
    [described] = admin.describe_topics([topic])
    assert len(described["partitions"]) == 5


def test_consumer_returns_owning_every_partition_of_a_new_topic(kafka_url: str, group: str) -> None:
    """Apache Kafka confirms CreateTopics before its metadata shows the topic; a consumer that
    subscribed in between would get an empty first assignment (and rebalance later)."""
    with mqkit.connect(kafka_url, partitions=3) as broker:
        for i in range(5):
            consumer = broker.consumer(f"{group}-t{i}", group=f"{group}-{i}")
            owned = sorted(tp.partition for tp in consumer._driver._parts)  # type: ignore[attr-defined]
            assert owned == [0, 1, 2]
            consumer.close()


def test_rebalance_commits_acked_work_and_loses_no_unacked_message(
    kafka_url: str, admin: Any, topic: str, group: str
) -> None:
    total = 60
    with mqkit.connect(kafka_url, partitions=4) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            ids = {producer.send(topic, i, key=f"k{i % 8}") for i in range(total)}
        taken = collect(first, 20, ack=False)
        acked = {m.id for m in taken[:12]}
        for message in taken[:12]:
            message.ack()
        held = taken[12:]
        before = committed(admin, group)
        assert sum(before.values()) >= 1

        # A second member joins: the first one's partitions are revoked and split.
        second = broker.consumer(topic, group=group)
        for message in held:  # acks after the rebalance: ignored if the partition moved
            message.ack()

        seen: list[str] = [m.id for m in taken]
        lock = threading.Lock()
        stop = threading.Event()

        def drain(consumer: mqkit.Consumer) -> None:
            while not stop.is_set():
                message = consumer.receive(timeout=0.2)
                if message is not None:
                    with lock:
                        seen.append(message.id)
                    message.ack()

        threads = [threading.Thread(target=drain, args=(c,)) for c in (first, second)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if set(seen) >= ids:
                    break
            time.sleep(0.1)
        time.sleep(1.0)  # let any stray redelivery show up
        stop.set()
        for thread in threads:
            thread.join()
    assert set(seen) == ids, "every message was delivered"
    for message_id in acked:
        assert seen.count(message_id) == 1, "a message acked before the rebalance came back"


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_message_acked_while_a_rebalance_takes_its_partition_is_not_delivered_again(
    kafka_url: str, admin: Any, topic: str, group: str, driver: str
) -> None:
    """The rebalance waits (up to ``revoke_grace``) for messages in flight on the partitions it
    takes away, and commits their acks: neither member sees the held message again. Without the
    wait, the ack came after the revocation and was ignored, and the message came back."""
    if driver == "confluent":
        pytest.importorskip("confluent_kafka")
    total = 12
    with mqkit.connect(with_driver(kafka_url, driver), partitions=2) as broker:
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(total):
                producer.send(topic, i, key=f"k{i}")
        [held] = collect(first, 1, ack=False)
        acker = threading.Timer(0.5, held.ack)  # acked while the second member's join waits
        acker.start()
        second = broker.consumer(topic, group=group)
        acker.join()
        rest: list[mqkit.Message] = []
        deadline = time.monotonic() + 30
        while len(rest) < total - 1 and time.monotonic() < deadline:
            for member in (first, second):
                message = member.receive(timeout=0.1)
                if message is not None:
                    rest.append(message)
                    message.ack()
        assert sorted(m.value for m in rest) == sorted(set(range(total)) - {held.value})
        assert_quiet(first)
        assert_quiet(second, wait=0.1)
        assert sum(committed(admin, group).values()) == total


@pytest.mark.parametrize("prefetch", [500, 3])
def test_a_partition_assigned_back_after_a_rebalance_resumes_at_its_first_unsettled_record(
    kafka_url: str, admin: Any, topic: str, group: str, prefetch: int
) -> None:
    """kafka-python keeps a partition's fetch position and paused flag when an eager rebalance
    gives it back to the same member. The records buffered beyond the commit point were dropped
    on revocation, so the member must go back to the commit point (and not stay paused, with
    ``prefetch=3`` the buffer is full and the partition paused when the rebalance starts)."""
    # Member ids start with the client id, and the range assignor gives a one-partition topic
    # to the member whose id sorts first: the first member keeps the partition.
    with (
        mqkit.connect(kafka_url, partitions=1, client_id="mqkit-a") as broker,
        mqkit.connect(kafka_url, partitions=1, client_id="mqkit-b") as other,
    ):
        first = broker.consumer(topic, group=group, prefetch=prefetch)
        with broker.producer() as producer:
            for i in range(10):
                producer.send(topic, i)
        taken = collect(first, 3, ack=False)
        assert [m.value for m in taken] == [0, 1, 2]
        taken[0].ack()
        assert committed(admin, group) == {0: 1}
        time.sleep(0.5)  # let the poller buffer (or pause at) the rest
        second = other.consumer(topic, group=group)  # the group rebalances
        rest = collect(first, 9)
        assert [m.value for m in rest] == list(range(1, 10))
        assert_quiet(first)
        assert second.receive(timeout=0.1) is None
        assert committed(admin, group) == {0: 10}
        second.close()


def test_two_groups_and_two_members_on_several_partitions(
    kafka_url: str, topic: str, group: str
) -> None:
    with mqkit.connect(kafka_url, partitions=4) as broker:
        a1 = broker.consumer(topic, group=group + "-a")
        a2 = broker.consumer(topic, group=group + "-a")
        b = broker.consumer(topic, group=group + "-b")
        with broker.producer() as producer:
            for i in range(40):
                producer.send(topic, i, key=f"key-{i}")
        got_b = collect(b, 40)
        got_a: list[int] = []
        end = time.monotonic() + 30
        while len(got_a) < 40 and time.monotonic() < end:
            for member in (a1, a2):
                message = member.receive(timeout=0.1)
                if message is not None:
                    got_a.append(message.value)
                    message.ack()
        assert sorted(m.value for m in got_b) == list(range(40))
        assert sorted(got_a) == list(range(40))


def test_a_rebalance_for_new_partitions_completes_when_the_poll_gives_up_during_it(
    kafka_url: str,
    admin: Any,
    bootstrap: str,
    topic: str,
    group: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group leader rebalances when a subscribed topic gains partitions (or appears).
    kafka-python 3.0.12 never finished that rebalance if the poll that started it timed out after
    the leader's assignment: the member then owned nothing. Here the assignment is made slower
    than ``poll_interval``, so the poll always times out there."""
    from kafka import KafkaProducer  # type: ignore[import-untyped]
    from kafka.admin import NewPartitions  # type: ignore[import-untyped]
    from kafka.coordinator.consumer import ConsumerCoordinator  # type: ignore[import-untyped]

    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        assign = ConsumerCoordinator._perform_assignment

        def slow_assignment(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return assign(self, *args, **kwargs)
            finally:
                time.sleep(0.5)  # on kafka-python's IO thread, after the leader's assignment

        monkeypatch.setattr(ConsumerCoordinator, "_perform_assignment", slow_assignment)
        admin.create_partitions({topic: NewPartitions(2)})
        deadline = time.monotonic() + 30
        while len(admin.describe_topics([topic])[0]["partitions"]) < 2:
            assert time.monotonic() < deadline, "the broker's metadata never showed partition 1"
            time.sleep(0.05)
        admin.wait_for_topics([topic])  # and a leader for it
        # The leader notices new partitions at its next metadata refresh (every 5 minutes by
        # default); ask for it now.
        consumer._driver.kafka_consumer._cluster.request_update()  # type: ignore[attr-defined]
        raw = KafkaProducer(bootstrap_servers=bootstrap)
        try:
            raw.send(topic, b"on the new partition", partition=1).get(timeout=30)
        finally:
            raw.close()
        got = collect(consumer, 1, deadline=30)
        assert len(got) == 1, "the member never got the new partition"
        assert got[0].body == b"on the new partition"
        assert got[0].id == envelope.transport_id(topic, 1, 0)  # a record from another producer
        assert_quiet(consumer)
