"""The two drivers of ``kafka://`` (kafka-python and ``driver=confluent``) on one topic: each
reads what the other sent, field for field, and both put one key on the same partition."""

from __future__ import annotations

import time

import pytest

import mqkit
from mqkit.testing.util import ARRIVAL, collect

DRIVERS = ("kafka-python", "confluent")


def with_driver(url: str, driver: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}driver={driver}"


@pytest.mark.parametrize(("sender", "receiver"), [DRIVERS, DRIVERS[::-1]])
def test_each_driver_reads_what_the_other_sent(
    kafka_url: str, topic: str, group: str, sender: str, receiver: str
) -> None:
    pytest.importorskip("confluent_kafka")
    headers: dict[str, mqkit.HeaderValue] = {"text": "héllo", "n": -7, "ratio": 1.5, "raw": b"\xff"}
    with (
        mqkit.connect(with_driver(kafka_url, receiver), partitions=4) as receiving,
        mqkit.connect(with_driver(kafka_url, sender), partitions=4) as sending,
    ):
        consumer = receiving.consumer(topic, group=group)
        with sending.producer() as producer:
            sent = [
                producer.send(
                    topic,
                    {"n": n},
                    key="customer-7",
                    headers=headers,
                    correlation_id=f"c-{n}",
                    reply_to="replies",
                )
                for n in range(3)
            ]
            keyless = producer.send(topic, {"n": "keyless"})
            producer.flush(ARRIVAL)
        got = collect(consumer, 4)
        consumer.close()
    by_id = {message.id: message for message in got}
    assert sorted(by_id) == sorted([*sent, keyless])
    keyed = [by_id[i] for i in sent]
    assert [m.value for m in keyed] == [{"n": n} for n in range(3)], "one key, in order"
    for n, message in enumerate(keyed):
        assert message.key == "customer-7"
        assert dict(message.headers) == headers
        assert message.correlation_id == f"c-{n}"
        assert message.reply_to == "replies"
        assert message.attempt == 1
    assert by_id[keyless].key is None and by_id[keyless].value == {"n": "keyless"}


def test_both_drivers_put_a_key_on_the_partition_of_kafkas_murmur2_partitioner(
    kafka_url: str, topic: str, group: str
) -> None:
    """librdkafka's default partitioner (CRC32) would put keys elsewhere than the Java client
    and kafka-python do; the confluent driver asks for murmur2."""
    pytest.importorskip("confluent_kafka")
    keys = [f"customer-{n}" for n in range(12)]
    with mqkit.connect(kafka_url, partitions=4) as broker:
        consumer = broker.consumer(topic, group=group)
        for driver in DRIVERS:
            with (
                mqkit.connect(with_driver(kafka_url, driver)) as sending,
                sending.producer() as producer,
            ):
                for key in keys:
                    producer.send(topic, {"driver": driver}, key=key)
                producer.flush(ARRIVAL)
        got = collect(consumer, 2 * len(keys))
        consumer.close()
    partitions: dict[str | None, set[int]] = {}
    for message in got:
        partitions.setdefault(message.key, set()).add(message.metadata["partition"])
    assert set(partitions) == set(keys)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert len(set().union(*partitions.values())) > 1, "the keys should spread over partitions"


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_message_reaches_an_idle_consumer_without_waiting_out_its_poll(
    kafka_url: str, topic: str, group: str, driver: str
) -> None:
    """The poller's wait for records ends when one arrives, not when the poll's timeout runs
    out (librdkafka's batch consume waits for a full batch or the timeout: with it, every
    message of a quiet topic waited a whole poll_interval)."""
    if driver == "confluent":
        pytest.importorskip("confluent_kafka")
    poll = 5.0
    with (
        mqkit.connect(with_driver(kafka_url, driver), poll_interval=poll) as broker,
        broker.consumer(topic, group=group) as consumer,
        broker.producer() as producer,
    ):
        producer.send(topic, "first")
        assert collect(consumer, 1), "the consumer joined and read the first message"
        time.sleep(1.0)  # the poller is now waiting on a quiet topic
        producer.send(topic, "second")
        producer.flush(ARRIVAL)
        sent = time.monotonic()
        message = consumer.receive(timeout=ARRIVAL)
        waited = time.monotonic() - sent
        assert message is not None and message.value == "second"
        message.ack()
    assert waited < poll / 2, f"{driver}: waited {waited:.2f} s for a message already sent"
