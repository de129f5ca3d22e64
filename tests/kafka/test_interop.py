"""mqkit next to plain kafka-python clients: what each side really sees of the other's records.

The plain side is kafka-python's own ``KafkaProducer`` / ``KafkaConsumer`` / ``KafkaAdminClient``
with their defaults, as a service that is not mqkit would use them.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from mqkit_kafka.backend import Backend

import mqkit
from mqkit import envelope
from mqkit.testing.util import ARRIVAL, assert_quiet, collect

TYPED: dict[str, mqkit.HeaderValue] = {
    "text": "héllo",
    "count": 7,
    "negative": -12345678901,
    "ratio": 1.5,
    "flag": True,
    "off": False,
    "raw": b"\xff\x00\x80",
    "empty": "",
}


@pytest.fixture
def plain_producer(bootstrap: str) -> Iterator[Any]:
    from kafka import KafkaProducer  # type: ignore[import-untyped]

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    yield producer
    producer.close()


def plain_records(bootstrap: str, topic: str, count: int) -> list[Any]:
    """``count`` records of ``topic`` read by a plain consumer group from the beginning."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"plain-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    out: list[Any] = []
    try:
        end = time.monotonic() + ARRIVAL
        while len(out) < count and time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    assert len(out) == count, f"the plain consumer got {len(out)} of {count} records"
    return sorted(out, key=lambda r: (r.partition, r.offset))


def test_a_plain_consumer_sees_mqkits_fields_as_standard_headers(
    kafka_url: str, bootstrap: str, topic: str
) -> None:
    with mqkit.connect(kafka_url, partitions=1) as broker:
        with broker.producer() as producer:
            sent = producer.send(
                topic,
                {"order": 42},
                key="customer-7",
                headers=TYPED,
                correlation_id="corr-1",
                reply_to="replies.orders",
            )
        with broker.producer(serializer="bytes") as raw:
            raw_id = raw.send(topic, b"\x00\xffbinary", key="customer-7")
    first, second = plain_records(bootstrap, topic, 2)
    assert json.loads(first.value) == {"order": 42}
    assert first.key == b"customer-7"
    headers = dict(first.headers)
    assert len(headers) == len(first.headers)  # every name once
    assert headers == {
        "text": "héllo".encode(),
        "count": b"7",
        "negative": b"-12345678901",
        "ratio": b"1.5",
        "flag": b"true",
        "off": b"false",
        "raw": b"\xff\x00\x80",
        "empty": b"",
        "content-type": b"application/json",
        "correlation-id": b"corr-1",
        "reply-to": b"replies.orders",
        envelope.HEADER_TYPES: headers[envelope.HEADER_TYPES],
        envelope.ID: sent.encode(),
    }
    assert json.loads(headers[envelope.HEADER_TYPES]) == {
        "count": "int",
        "negative": "int",
        "ratio": "float",
        "flag": "bool",
        "off": "bool",
        "raw": "bytes",
    }
    assert first.timestamp_type == 0  # CreateTime: mqkit's send time
    assert second.value == b"\x00\xffbinary"
    assert dict(second.headers) == {
        "content-type": b"application/octet-stream",
        envelope.ID: raw_id.encode(),
    }


def test_mqkit_reads_a_plain_producers_fields_and_headers(
    kafka_url: str, plain_producer: Any, topic: str, group: str
) -> None:
    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        headers = [
            ("content-type", b"application/json"),
            ("correlation-id", b"c-17"),
            ("reply-to", b"legacy.replies"),
            ("source", "gerät".encode()),
            ("binary", b"\xff\x00"),
            ("nothing", b""),  # kafka-python sends no null values
            ("count", b"7"),  # no type map: text, as sent
        ]
        plain_producer.send(
            topic, b'{"n": 1}', key=b"k-1", headers=headers, timestamp_ms=1_700_000_000_000
        )
        plain_producer.send(
            topic, b"\x00\xff", headers=[("content-type", b"application/octet-stream")]
        )
        plain_producer.send(topic, b"plain text", headers=[("content-type", b"text/plain")])
        plain_producer.flush(timeout=ARRIVAL)
        first, second, third = collect(consumer, 3)
        assert first.value == {"n": 1} and first.key == "k-1"
        assert (first.content_type, first.correlation_id, first.reply_to) == (
            "application/json",
            "c-17",
            "legacy.replies",
        )
        assert dict(first.headers) == {
            "source": "gerät",
            "binary": b"\xff\x00",
            "nothing": "",
            "count": "7",
        }
        assert type(first.headers["binary"]) is bytes
        assert first.id == envelope.transport_id(topic, 0, 0)
        assert first.timestamp == 1_700_000_000.0
        assert first.metadata["partition"] == 0 and first.metadata["offset"] == 0
        assert first.metadata["headers"] == headers
        assert first.metadata["timestamp_type"] == 0
        assert (second.value, second.content_type) == (b"\x00\xff", "application/octet-stream")
        assert (third.value, third.content_type) == ("plain text", "text/plain")
        assert_quiet(consumer)


def test_a_plain_producers_mqkit_names_are_headers_unless_well_formed(
    kafka_url: str, plain_producer: Any, topic: str, group: str
) -> None:
    """The rule for names under mqkit's prefix from other producers: ``mqkit-id`` is the id
    only if it is 32 lowercase hex digits, ``mqkit-types`` the type map only if it is one;
    everything else is a user header (nothing is dropped)."""
    given = uuid.uuid4().hex
    with mqkit.connect(kafka_url, partitions=1) as broker:
        consumer = broker.consumer(topic, group=group)
        plain_producer.send(topic, b"1", headers=[(envelope.ID, b"order-42")])
        plain_producer.send(
            topic,
            b"2",
            headers=[
                (envelope.ID, given.encode()),
                ("n", b"5"),
                (envelope.HEADER_TYPES, b'{"n":"int"}'),
                (envelope.KEY, b"k"),
                ("mqkit-anything", b"x"),
            ],
        )
        plain_producer.flush(timeout=ARRIVAL)
        first, second = collect(consumer, 2)
        assert first.id == envelope.transport_id(topic, 0, 0)
        assert dict(first.headers) == {envelope.ID: "order-42"}
        assert second.id == given
        assert dict(second.headers) == {"n": 5, envelope.KEY: "k", "mqkit-anything": "x"}


def test_a_plain_producer_and_mqkit_put_one_key_on_the_same_partition(
    kafka_url: str, plain_producer: Any, topic: str, group: str
) -> None:
    """Both use Kafka's murmur2 partitioner on the key bytes, so one key's records of both
    stay in one partition, in order."""
    with mqkit.connect(kafka_url, partitions=4) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for n in range(3):
                for key in ("customer-7", "customer-8", "customer-9"):
                    producer.send(topic, {"by": "mqkit", "n": n}, key=key)
                    producer.flush(ARRIVAL)
                    plain_producer.send(
                        topic, json.dumps({"by": "plain", "n": n}).encode(), key=key.encode()
                    )
                    plain_producer.flush(timeout=ARRIVAL)
        got = collect(consumer, 18)
        partitions: dict[str | None, set[int]] = {}
        for message in got:
            partitions.setdefault(message.key, set()).add(message.metadata["partition"])
        assert all(len(p) == 1 for p in partitions.values()), partitions
        for key in ("customer-7", "customer-8", "customer-9"):
            values = [m.value for m in got if m.key == key]
            assert values == [{"by": by, "n": n} for n in range(3) for by in ("mqkit", "plain")]


def test_an_existing_topic_reaches_every_group_in_partition_order_and_is_left_alone(
    kafka_url: str, plain_producer: Any, admin: Any, topic: str
) -> None:
    """A topic created beforehand by another tool (4 partitions, its own configuration),
    written by a plain producer with arbitrary keys and explicit partitions: every mqkit
    group gets everything, each partition in order; mqkit neither re-creates nor alters it."""
    from kafka.admin import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]

    admin.create_topics(
        {
            topic: {
                "num_partitions": 4,
                "replication_factor": 1,
                "configs": {"retention.ms": "3600000"},
            }
        }
    )
    admin.wait_for_topics([topic], timeout_ms=int(ARRIVAL * 1000))

    def configs() -> dict[str, Any]:
        result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {name: entry["value"] for name, entry in result["topic"][topic].items()}

    before = configs()
    # The mqkit side asks for other partition counts: they apply to topics it creates only.
    with mqkit.connect(kafka_url, partitions=2) as broker:
        # The adapter looks the topic up and creates only what is missing.
        new = f"{topic}.new"
        backend = broker.backend
        assert isinstance(backend, Backend)
        assert backend.ensure_topics([topic, new]) == {new}
        groups = [broker.consumer(topic, group=f"g{n}-{uuid.uuid4().hex[:8]}") for n in range(2)]
        sent: list[tuple[int, bytes | None, int]] = []
        for n in range(40):
            key = None if n % 5 == 0 else f"any key {n % 7}".encode()
            partition = n % 4 if n % 3 == 0 else None  # explicit, or the plain partitioner's
            metadata = plain_producer.send(
                topic, json.dumps(n).encode(), key=key, partition=partition
            ).get(timeout=ARRIVAL)
            sent.append((metadata.partition, key, n))
        with broker.producer() as producer:
            producer.send(topic, 40, key="from mqkit")
        for consumer in groups:
            got = collect(consumer, 41)
            assert sorted(m.value for m in got) == list(range(41))
            for partition in range(4):
                order = [m.value for m in got if m.metadata["partition"] == partition]
                assert order == sorted(order), (partition, order)
                assert order[: len([n for p, _, n in sent if p == partition])] == [
                    n for p, _, n in sent if p == partition
                ]
            assert_quiet(consumer, 0.5)
    [described] = admin.describe_topics([topic])
    assert len(described["partitions"]) == 4
    assert configs() == before
    assert before["retention.ms"] == "3600000"


def test_request_reply_with_a_plain_service(
    kafka_url: str, bootstrap: str, plain_producer: Any, admin: Any, topic: str
) -> None:
    """mqkit asks, a plain kafka-python service answers on ``reply-to`` with the request's
    ``correlation-id``; the reply topic is created on demand and removed on close."""
    from kafka import KafkaConsumer

    with mqkit.connect(kafka_url) as broker:
        broker.consumer(topic, group=f"init-{uuid.uuid4().hex[:6]}").close()  # topic exists
        service = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"service-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
        )
        stop = threading.Event()
        seen: list[dict[str, bytes]] = []

        def serve() -> None:
            while not stop.is_set():
                for batch in service.poll(timeout_ms=200).values():
                    for record in batch:
                        headers = dict(record.headers)
                        seen.append(headers)
                        answer = {"echo": json.loads(record.value)}
                        plain_producer.send(
                            headers["reply-to"].decode(),
                            json.dumps(answer).encode(),
                            headers=[
                                ("correlation-id", headers["correlation-id"]),
                                ("content-type", b"application/json"),
                            ],
                        )
                        plain_producer.flush()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with broker.producer() as client:
                answers = [client.request(topic, {"q": n}, timeout=ARRIVAL) for n in range(2)]
                inbox = seen[0]["reply-to"].decode()
                assert inbox.startswith("mqkit.reply.")
                assert inbox in admin.list_topics()
                assert len(admin.describe_topics([inbox])[0]["partitions"]) == 1
        finally:
            stop.set()
            thread.join(ARRIVAL)
            service.close()
        assert [a.value for a in answers] == [{"echo": {"q": n}} for n in range(2)]
        assert [a.correlation_id for a in answers] == [h["correlation-id"].decode() for h in seen]
        assert all(h["content-type"] == b"application/json" for h in seen)
        # The producer's close removed its reply topic and group.
        end = time.monotonic() + ARRIVAL
        while inbox in admin.list_topics() and time.monotonic() < end:
            time.sleep(0.2)
        assert inbox not in admin.list_topics()
        assert inbox not in [g["group_id"] for g in admin.list_groups()]


def test_mqkit_replies_to_a_plain_clients_request(
    kafka_url: str, bootstrap: str, plain_producer: Any, topic: str, group: str
) -> None:
    reply_topic = f"{topic}.replies"
    with mqkit.connect(kafka_url) as broker:
        consumer = broker.consumer(topic, group=group)
        broker.consumer(reply_topic, group=f"{group}-r").close()  # the client's reply topic
        plain_producer.send(
            topic,
            b'{"q": 1}',
            headers=[("correlation-id", b"req-1"), ("reply-to", reply_topic.encode())],
        )
        plain_producer.flush(timeout=ARRIVAL)
        [request] = collect(consumer, 1, ack=False)
        with broker.producer() as producer:
            producer.reply(request, {"a": 1})
        request.ack()
    [reply] = plain_records(bootstrap, reply_topic, 1)
    headers = dict(reply.headers)
    assert json.loads(reply.value) == {"a": 1}
    assert headers["correlation-id"] == b"req-1"
    assert headers["content-type"] == b"application/json"


def test_with_create_topics_off_nothing_is_created(
    kafka_url: str, admin: Any, topic: str, group: str
) -> None:
    """kafka-python 3.0.12 asks for auto-creation in every Metadata request whatever its
    clients' setting; the adapter makes the setting count, so a consumer of a topic that does
    not exist yet creates nothing (the broker here auto-creates topics, as Kafka's default)."""
    with mqkit.connect(kafka_url, create_topics=False) as broker:
        consumer = broker.consumer(topic, group=group)
        assert consumer.receive(timeout=1.0) is None
        assert topic not in admin.list_topics()
        consumer.close()
