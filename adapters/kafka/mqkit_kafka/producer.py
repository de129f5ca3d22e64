"""The producer: kafka-python's ``KafkaProducer`` with ``acks=all`` and idempotence."""

from __future__ import annotations

import logging
import random
import threading
from typing import TYPE_CHECKING, Any

from kafka import KafkaProducer  # type: ignore[import-untyped]
from kafka import errors as kerrors

from mqkit.adapter import OutgoingMessage, ProducerBase
from mqkit.errors import BrokerUnavailable, DeliveryTimeout, MqkitError
from mqkit_kafka import wire
from mqkit_kafka._errors import translate
from mqkit_kafka.settings import Settings, honour_auto_create, ms

if TYPE_CHECKING:
    from mqkit_kafka.backend import Backend

log = logging.getLogger("mqkit.kafka.producer")


class Producer(ProducerBase):
    """``send`` hands records to kafka-python's batching; ``flush`` waits for every ack."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        super().__init__()
        self._backend = backend
        self._settings = settings
        self._where = backend.where
        self._hosts = backend.hosts
        self._lock = threading.Lock()
        self._failed: list[BaseException] = []
        self._sticky: dict[str, int] = {}
        self._sticky_keyless = settings.keyless == "sticky"
        config: dict[str, Any] = dict(backend.client)
        config.update(
            acks="all",
            enable_idempotence=settings.idempotence,
            linger_ms=settings.linger_ms,
            delivery_timeout_ms=ms(settings.delivery_timeout),
            max_request_size=settings.max_message_bytes,
            max_block_ms=ms(settings.connect_timeout),
            compression_type=None if settings.compression == "none" else settings.compression,
            # The adapter creates the topics it needs itself (with its partition count); a
            # broker's auto-creation would only bring back a throw-away reply topic that was
            # deleted, when this producer refreshes its metadata.
            allow_auto_create_topics=not settings.create_topics,
        )
        try:
            self._producer = KafkaProducer(**config)
        except Exception as exc:
            raise translate(exc, f"{self._where}: starting a producer", self._hosts) from None
        honour_auto_create(getattr(self._producer, "_metadata", None), not settings.create_topics)

    def send(self, message: OutgoingMessage) -> None:
        topic = message.topic
        self._backend.ensure_topic(topic)
        key, headers, timestamp_ms = wire.encode(message)
        try:
            partition = None
            if key is None and self._sticky_keyless:
                partition = self._sticky.get(topic)
                if partition is None:
                    partition = self._pick_partition(topic)
            future = self._producer.send(
                topic,
                partition=partition,
                value=message.body,
                key=key,
                headers=headers,
                timestamp_ms=timestamp_ms,
            )
        except Exception as exc:
            raise translate(exc, f"{self._where}: sending to {topic!r}", self._hosts) from None
        future.add_errback(self._record_failure)

    def _pick_partition(self, topic: str) -> int:
        """One partition per topic for this producer's keyless messages, so they stay in order."""
        partitions = self._producer.partitions_for(topic)
        if not partitions:
            raise MqkitError(f"{self._where}: topic {topic!r} has no partitions")
        choice: int = random.choice(sorted(partitions))
        self._sticky[topic] = choice
        return choice

    def _record_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._failed.append(exc)

    def flush(self, timeout: float | None) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except kerrors.KafkaTimeoutError:
            raise DeliveryTimeout(
                f"{self._where}: the broker did not confirm every message within {timeout} s"
            ) from None
        with self._lock:
            failed, self._failed = self._failed, []
        if failed:
            first = failed[0]
            error = translate(
                first, f"{self._where}: {len(failed)} message(s) were not stored", self._hosts
            )
            if isinstance(first, kerrors.KafkaTimeoutError):
                error = BrokerUnavailable(
                    f"{self._where}: {len(failed)} message(s) were not confirmed within "
                    f"delivery_timeout={self._settings.delivery_timeout:g} s ({first})"
                )
            raise error

    def _close(self) -> None:
        try:
            self.flush(None)
        finally:
            try:
                self._producer.close(timeout=self._settings.delivery_timeout)
            except Exception as exc:  # close is best effort after flush
                log.debug("closing the producer failed: %s", exc)
