"""``partitions=0``: a group is one quorum queue bound to the topic's exchange, whose members
compete for its messages (no hash exchange, no partitions, no locks)."""

from __future__ import annotations

from collections import Counter

import pika
import pika.exceptions
import pytest
from mqkit_rabbitmq.wire import group_base, hash_exchange

import mqkit
from mqkit import ConfigError
from tests.rabbitmq.conftest import receive_all, receive_each


def _exists(url: str, *, queue: str = "", exchange: str = "") -> bool:
    """Whether the queue or exchange exists (a passive declaration)."""
    conn = pika.BlockingConnection(pika.URLParameters(url.split("?")[0]))
    try:
        channel = conn.channel()
        if queue:
            channel.queue_declare(queue, passive=True)
        else:
            channel.exchange_declare(exchange, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return False
    finally:
        conn.close()


def test_a_one_queue_group_is_its_queue_bound_to_the_topic(
    rabbit_url: str, clean: tuple[str, str]
) -> None:
    """One member sees the queue's order; a nacked message comes back, counted (after what the
    member had prefetched); a group of the same topic with partitions gets every message too."""
    topic, group = clean
    with mqkit.connect(rabbit_url) as broker:
        one = broker.consumer(topic, group=group, partitions=0)
        partitioned = broker.consumer(topic, group=group + "-p", partitions=2)
        with broker.producer() as producer:
            sent = [producer.send(topic, i, key=f"k{i % 3}") for i in range(30)]
        first = one.receive(timeout=10)
        assert first is not None and (first.id, first.attempt) == (sent[0], 1)
        first.nack()
        rest = receive_all([one], 30)
        assert [m.id for m in rest if m.id != sent[0]] == sent[1:]
        assert [m.attempt for m in rest if m.id == sent[0]] == [2]
        assert sorted(m.id for m in receive_all([partitioned], 30)) == sorted(sent)
        assert one.receive(timeout=0.5) is None
    base = group_base(topic, group)
    assert _exists(rabbit_url, queue=base)
    assert not _exists(rabbit_url, exchange=hash_exchange(base))


def test_members_of_a_one_queue_group_compete(rabbit_url: str, clean: tuple[str, str]) -> None:
    """Each message reaches one member once; both members take part."""
    topic, group = clean
    with mqkit.connect(rabbit_url) as broker:
        members = [broker.consumer(topic, group=group, partitions=0, prefetch=1) for _ in "ab"]
        with broker.producer() as producer:
            sent = [producer.send(topic, i) for i in range(40)]
        got = receive_each(members, 40)
        assert Counter(m.id for _, m in got) == Counter(sent)
        assert all(member.receive(timeout=0.5) is None for member in members)
        assert set(Counter(index for index, _ in got)) == {0, 1}


@pytest.mark.parametrize(("created", "joining"), [(0, 2), (2, 0)])
def test_a_member_of_the_other_mode_is_refused(
    rabbit_url: str, clean: tuple[str, str], created: int, joining: int
) -> None:
    """Mixing the modes would bind a second copy of the group's messages: refused, and nothing
    of the other mode is left bound."""
    topic, group = clean
    with mqkit.connect(rabbit_url) as broker:
        first = broker.consumer(topic, group=group, partitions=created)
        with pytest.raises(ConfigError, match=r"created with partitions.*has partitions"):
            broker.consumer(topic, group=group, partitions=joining)
        with broker.producer() as producer:
            sent = [producer.send(topic, i) for i in range(5)]
        assert sorted(m.id for m in receive_all([first], 5)) == sorted(sent)
        assert first.receive(timeout=1) is None
    assert _exists(rabbit_url, exchange=hash_exchange(group_base(topic, group))) == bool(created)
