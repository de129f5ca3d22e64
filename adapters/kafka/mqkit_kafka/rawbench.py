"""The raw client baseline for ``mqkit bench`` (entry point ``mqkit.bench``: ``kafka``):
kafka-python, or confluent-kafka for a URL with ``driver=confluent`` (:class:`RawConfluentClient`).

The same durable work with the same guarantees as the adapter, written the way a kafka-python
user would, reading the adapter's options from the URL:

- topics created with the adapter's partition count;
- a producer with ``acks=all`` and idempotence that flushes at the end. With the adapter's
  default ``keyless=sticky`` it sends a topic's keyless bodies to one partition chosen at random,
  as the adapter does so that one producer's keyless messages stay in order (kafka-python's own
  partitioner spreads them over the partitions and loses that order; ``?keyless=spread``
  measures both sides that way);
- a group consumer with the adapter's fetch wait (``poll_interval``, at most 500 ms). It bounds
  the consume rate of one busy partition next to idle ones: kafka-python sends one fetch per
  broker at a time and leaves out the partitions whose fetched records it still holds, so
  while it hands out the busy partition's records the fetch in flight lists only the idle ones,
  and the broker holds it for the whole fetch wait (about 1 MiB per wait, measured on Apache
  Kafka 4.1.1 and on Tansu alike). kafka-python's default of 500 ms would measure that wait;
- manual commits that give the guarantee of the URL's ``ack_commit`` mode:

  - ``sync`` (the adapter's default): after processing a record the loop commits its offset + 1
    with the blocking ``commit()``, which is what a kafka-python user needs for "processed =
    never delivered again", the promise of mqkit's ``ack()`` in this mode (it returns once the
    commit is confirmed);
  - ``async``: after processing a poll batch the loop calls ``commit_async()`` (at-least-once
    with background commits: a crash may redeliver the last batch), and ``close()`` commits
    synchronously, as mqkit does in this mode.

What it leaves out is what mqkit adds: per-message acks committed only up to the first unacked
offset, the poller thread and its buffer, nack rewinds, attempt counting and the wait for the
group to settle.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kafka import (  # type: ignore[import-untyped]
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)

from mqkit.config import BrokerURL
from mqkit_kafka import confluent
from mqkit_kafka.backend import Backend
from mqkit_kafka.settings import Settings, client_config, ms

OnBody = Callable[[bytes], None]


class RawKafkaClient:
    """One client's worth of raw kafka-python: subscribe, produce (flushed), consume (committed)."""

    def __init__(self, url: BrokerURL) -> None:
        # The adapter's reading of the URL: the same options and connection settings.
        Backend.check_url(url)
        self._url = url
        self._settings = Settings.read(url.redacted(), url.params)
        self._settings.check(url.redacted())
        self._client = client_config(url, self._settings, url.redacted())
        self._producer: Any = None
        self._consumer: Any = None

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        backend = Backend.open(self._url, dict(self._url.params))  # topic creation, as mqkit's
        try:
            backend.ensure_topics(topics)
        finally:
            backend.close()
        s = self._settings
        self._consumer = KafkaConsumer(
            **self._client,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(s.heartbeat * 1000),
            max_poll_records=min(500, s.prefetch),  # as the adapter's
            fetch_max_wait_ms=min(500, int(s.poll_interval * 1000)),  # as the adapter's
        )
        self._consumer.subscribe(list(topics))
        deadline = time.monotonic() + s.join_timeout
        # As the adapter does (consumer.Consumer._load_metadata): a group leader assigns only
        # the topics whose metadata it has, so join with all of it, and wait for every topic.
        for topic in topics:
            while not self._consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
                time.sleep(0.05)
        wanted = set(topics)
        while {tp.topic for tp in self._consumer.assignment()} != wanted:
            if time.monotonic() >= deadline:
                break
            self._consumer.poll(timeout_ms=100, max_records=1, update_offsets=False)
        if self._consumer.assignment():  # the join poll may have moved positions
            for tp in self._consumer.assignment():
                committed = self._consumer.committed(tp)
                if committed is None:
                    self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, committed)

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        if self._producer is None:
            s = self._settings
            self._producer = KafkaProducer(
                **self._client,
                acks="all",
                enable_idempotence=s.idempotence,
                linger_ms=s.linger_ms,
                max_request_size=s.max_message_bytes,
            )
        partition = None
        if self._settings.keyless == "sticky":
            partition = random.choice(sorted(self._producer.partitions_for(topic)))
        send = self._producer.send
        for body in bodies:
            send(topic, value=body, partition=partition)
        self._producer.flush()

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        assert self._consumer is not None, "subscribe first"
        consumer = self._consumer
        per_record = self._settings.ack_commit == "sync"
        while not until() and time.monotonic() < deadline:
            batch: dict[TopicPartition, list[Any]] = consumer.poll(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    on_body(record.value)
                    if per_record:
                        consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
            if batch and not per_record:
                consumer.commit_async()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
        if self._consumer is not None:
            if self._settings.ack_commit == "async":
                self._consumer.commit()  # what the background commits have not covered yet
            self._consumer.close()


class RawConfluentClient:
    """The same loop on confluent-kafka, as its users write it: a ``Producer`` with acks=all and
    idempotence, ``poll(0)`` after each ``produce`` and one ``flush``; a ``Consumer`` taking
    batches with ``consume()`` and committing each record with ``commit(message,
    asynchronous=False)`` (``ack_commit=sync``) or each batch asynchronously (``async``)."""

    def __init__(self, url: BrokerURL) -> None:
        Backend.check_url(url)
        self._url = url
        self._settings = Settings.read(url.redacted(), url.params)
        self._settings.check(url.redacted())
        self._ck = confluent.load()
        self._client = confluent.client_config(url, self._settings)
        self._producer: Any = None
        self._consumer: Any = None
        self._early: list[Any] = []  # records fetched by the polls that completed the join

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        backend = Backend.open(self._url, dict(self._url.params))
        try:
            backend.ensure_topics(topics)
        finally:
            backend.close()
        s = self._settings
        assigned: list[Any] = []
        self._consumer = self._ck.Consumer(
            {
                **self._client,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": ms(s.session_timeout),
                "heartbeat.interval.ms": ms(s.heartbeat),
                "fetch.wait.max.ms": min(500, ms(s.poll_interval)),
            }
        )
        self._consumer.subscribe(list(topics), on_assign=lambda _c, parts: assigned.extend(parts))
        deadline = time.monotonic() + s.join_timeout
        while not assigned and time.monotonic() < deadline:
            self._early.extend(self._consumer.consume(1, 0.1))

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        if self._producer is None:
            s = self._settings
            self._producer = self._ck.Producer(
                {
                    **self._client,
                    "acks": "all",
                    "enable.idempotence": s.idempotence,
                    "linger.ms": s.linger_ms,
                    "message.max.bytes": s.max_message_bytes,
                }
            )
        producer, failed = self._producer, []
        partition = -1  # librdkafka's partitioner
        if self._settings.keyless == "sticky":
            partitions = producer.list_topics(topic, timeout=10).topics[topic].partitions
            partition = random.choice(sorted(partitions))

        def delivered(error: Any, _record: Any) -> None:
            if error is not None:
                failed.append(error)

        for body in bodies:
            while True:
                try:
                    producer.produce(topic, body, partition=partition, on_delivery=delivered)
                    break
                except BufferError:  # its queue is full: serve deliveries, then again
                    producer.poll(0.05)
            producer.poll(0)
        if producer.flush(60) or failed:
            raise RuntimeError(f"raw confluent-kafka producer: not delivered: {failed[:1]}")

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        assert self._consumer is not None, "subscribe first"
        consumer = self._consumer
        per_record = self._settings.ack_commit == "sync"
        batch, self._early = self._early, []
        while True:
            for record in batch:
                if record.error() is not None:
                    continue  # partition EOF and the like; a real error shows as a timeout
                on_body(record.value())
                if per_record:
                    consumer.commit(message=record, asynchronous=False)
            if batch and not per_record:
                consumer.commit(asynchronous=True)
            if until() or time.monotonic() >= deadline:
                return
            batch = consumer.consume(500, 0.2)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
        if self._consumer is not None:
            if self._settings.ack_commit == "async":
                with contextlib.suppress(self._ck.KafkaException):  # nothing left to commit
                    self._consumer.commit(asynchronous=False)
            self._consumer.close()


def raw_client(url: BrokerURL) -> RawKafkaClient | RawConfluentClient:
    if url.params.get("driver") == "confluent":
        return RawConfluentClient(url)
    return RawKafkaClient(url)
