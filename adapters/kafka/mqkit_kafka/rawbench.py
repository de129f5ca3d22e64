"""The raw kafka-python baseline for ``mqkit bench`` (entry point ``mqkit.bench``: ``kafka``).

The same durable work as the adapter, written the way a kafka-python user would: topics created
with the adapter's partition count, a producer with ``acks=all`` and idempotence that flushes at
the end, and a group consumer that commits once per poll batch. What it leaves out is what mqkit
adds: per-message acks committed only up to the first unacked offset, the poller thread and its
buffer, nack rewinds, attempt counting and the wait for the group to settle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer  # type: ignore[import-untyped]

from mqkit.config import BrokerURL
from mqkit_kafka.backend import KafkaBackend, parse_settings

OnBody = Callable[[bytes], None]


class RawKafkaClient:
    """One client's worth of raw kafka-python: subscribe, produce (flushed), consume (committed)."""

    def __init__(self, url: BrokerURL) -> None:
        self._settings = parse_settings(url, dict(url.params))[0]
        self._producer: Any = None
        self._consumer: Any = None

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        backend = KafkaBackend(self._settings)  # topic creation only, as the adapter does it
        try:
            backend.ensure_topics(topics)
        finally:
            backend.close()
        s = self._settings
        self._consumer = KafkaConsumer(
            **s.client_kwargs,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval * 1000),
            max_poll_records=s.prefetch,
        )
        self._consumer.subscribe(list(topics))
        deadline = time.monotonic() + s.join_timeout
        while not self._consumer.assignment() and time.monotonic() < deadline:
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
                **s.client_kwargs, acks="all", enable_idempotence=s.idempotence,
                linger_ms=s.linger_ms, max_request_size=s.max_message_bytes,
            )
        send = self._producer.send
        for body in bodies:
            send(topic, value=body)
        self._producer.flush()

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        assert self._consumer is not None, "subscribe first"
        while not until() and time.monotonic() < deadline:
            batch: dict[Any, list[Any]] = self._consumer.poll(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    on_body(record.value)
            if batch:
                self._consumer.commit()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
        if self._consumer is not None:
            self._consumer.close()


def raw_client(url: BrokerURL) -> RawKafkaClient:
    return RawKafkaClient(url)
