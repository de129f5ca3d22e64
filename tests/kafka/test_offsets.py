"""Acks become offset commits only up to the first unsettled message; nacks seek back."""

from __future__ import annotations

from typing import Any

import mqkit
from mqkit.testing.util import assert_quiet, collect
from tests.kafka.conftest import committed


def test_out_of_order_acks_never_commit_past_a_gap(
    kafka_url: str, admin: Any, topic: str, group: str
) -> None:
    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(10):
                producer.send(topic, i)
        messages = {m.value: m for m in collect(consumer, 10, ack=False)}
        assert sorted(messages) == list(range(10))

        def ack(*values: int) -> dict[int, int]:
            for value in values:
                messages[value].ack()
            return committed(admin, group)

        assert ack(7) == {}  # 0..6 unsettled: nothing may be committed
        assert ack(0, 1, 2) == {0: 3}
        assert ack(5) == {0: 3}  # 3 and 4 still open
        assert ack(3) == {0: 4}
        assert ack(4) == {0: 6}  # 5 was acked earlier; 6 is open
        assert ack(6) == {0: 8}  # 7 was acked first of all
        consumer.close()
        assert committed(admin, group) == {0: 8}

        again = broker.consumer(topic, group=group)
        rest = collect(again, 2)
        assert sorted(m.value for m in rest) == [8, 9]
        assert_quiet(again)
        assert committed(admin, group) == {0: 10}


def test_nack_redelivers_before_later_messages_without_duplicates(
    kafka_url: str, topic: str, group: str
) -> None:
    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(3):
                producer.send(topic, f"a{i}", key="a")
                producer.send(topic, f"b{i}", key="b")
        first = consumer.receive(timeout=30)
        assert first is not None and (first.value, first.attempt) == ("a0", 1)
        first.nack()
        order = [(m.value, m.attempt) for m in collect(consumer, 6)]
        assert order == [("a0", 2), ("b0", 1), ("a1", 1), ("b1", 1), ("a2", 1), ("b2", 1)]
        assert_quiet(consumer)


def test_nack_skips_messages_already_in_flight_or_acked(
    kafka_url: str, admin: Any, topic: str, group: str
) -> None:
    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(5):
                producer.send(topic, i)
        m0, m1, m2 = collect(consumer, 3, ack=False)
        m1.ack()
        m0.nack()
        assert committed(admin, group) == {}
        again = consumer.receive(timeout=30)
        assert again is not None and (again.value, again.attempt) == (0, 2)
        again.ack()
        assert committed(admin, group) == {0: 2}  # 2 is still in flight
        rest = collect(consumer, 2)
        assert [m.value for m in rest] == [3, 4]  # 1 (acked) and 2 (in flight) not repeated
        m2.ack()
        assert committed(admin, group) == {0: 5}
        assert_quiet(consumer)


def test_a_later_nack_does_not_skip_an_earlier_nacked_message(
    kafka_url: str, admin: Any, topic: str, group: str
) -> None:
    """Two nacks on one partition before the first one's record is fetched again: the second
    nack's seek must not jump over the first nacked record (it was lost before)."""
    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for i in range(6):
                producer.send(topic, i, key="a" if i % 2 else "b")
        messages = collect(consumer, 6, ack=False)
        assert [m.value for m in messages] == list(range(6))
        messages[0].ack()
        messages[1].nack()  # key a
        messages[3].nack()  # key a, behind it: gives back its successor too
        messages[5].nack()
        messages[2].ack()
        messages[4].ack()
        again = collect(consumer, 3)
        assert [(m.value, m.attempt) for m in again] == [(1, 2), (3, 2), (5, 2)]
        assert_quiet(consumer)
        assert committed(admin, group) == {0: 6}


def test_nack_without_requeue_commits_like_an_ack(
    kafka_url: str, admin: Any, topic: str, group: str
) -> None:
    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, "poison")
        [message] = collect(consumer, 1, ack=False)
        message.nack(requeue=False)
        assert committed(admin, group) == {0: 1}


def test_offset_reset_latest_starts_a_new_group_at_the_end(
    kafka_url: str, topic: str, group: str
) -> None:
    """A new group with ``offset_reset=latest`` skips the retained records, however they were
    batched. (A broker that answers ListOffsets(latest) with the last batch's base offset + 1,
    as Tansu did, puts such a group inside the old records: docs/kafka.md.)"""
    with mqkit.connect(kafka_url, partitions=1) as broker:
        with broker.producer() as producer:
            for i in range(10):  # sent together: a few records per batch
                producer.send(topic, f"old-{i}")
        consumer = broker.consumer(topic, group=group, offset_reset="latest")
        with broker.producer() as producer:
            producer.send(topic, "new")
        assert [m.value for m in collect(consumer, 1)] == ["new"]
        assert_quiet(consumer)


def test_depth_is_the_groups_lag(kafka_url: str, topic: str, group: str) -> None:
    """broker.depth: end offsets minus the group's committed offsets, over every partition
    (a group that committed nothing yet lags by the whole topic)."""
    with mqkit.connect(kafka_url) as broker:
        broker.declare(topic, group=group)
        assert broker.depth(group, topic) == 0
        with broker.producer() as producer:
            for n in range(9):
                producer.send(topic, n, key=f"k{n}")
        assert broker.depth(group, topic) == 9
        with broker.consumer(topic, group=group) as consumer:
            for _ in range(4):
                message = consumer.receive(timeout=30)
                assert message is not None
                message.ack()
        assert broker.depth(group, topic) == 5
