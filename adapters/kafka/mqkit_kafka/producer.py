"""The producer: kafka-python's ``KafkaProducer`` with ``acks=all`` and idempotence."""

from __future__ import annotations

import random
import threading
from typing import TYPE_CHECKING, Any

from kafka import KafkaProducer  # type: ignore[import-untyped]
from kafka import errors as kerrors

from mqkit.errors import BrokerUnavailable, ClosedError, DeliveryTimeout, MqkitError
from mqkit.message import OutgoingMessage
from mqkit_kafka._errors import translate
from mqkit_kafka.backend import Settings, log

if TYPE_CHECKING:
    from mqkit_kafka.backend import KafkaBackend

#: Record header carrying ``OutgoingMessage.id``; removed again before the user sees headers.
ID_HEADER = "mqkit-id"


def encode_headers(message: OutgoingMessage) -> list[tuple[str, bytes]]:
    headers = [(k, v.encode("utf-8")) for k, v in message.headers.items() if k != ID_HEADER]
    headers.append((ID_HEADER, message.id.encode("ascii")))
    return headers


class KafkaProducerDriver:
    """``send`` hands records to kafka-python's batching; ``flush`` waits for every ack."""

    def __init__(self, backend: KafkaBackend, settings: Settings) -> None:
        self._backend = backend
        self._settings = settings
        self._where = settings.where
        self._lock = threading.Lock()
        self._failed: list[BaseException] = []
        self._closed = False
        self._sticky: dict[str, int] = {}
        kwargs: dict[str, Any] = dict(settings.client_kwargs)
        kwargs.update(
            acks="all",
            enable_idempotence=settings.idempotence,
            linger_ms=settings.linger_ms,
            delivery_timeout_ms=int(settings.delivery_timeout * 1000),
            max_request_size=settings.max_message_bytes,
            max_block_ms=int(settings.connect_timeout * 1000),
            compression_type=None if settings.compression == "none" else settings.compression,
        )
        try:
            self._producer = KafkaProducer(**kwargs)
        except Exception as exc:
            raise translate(exc, f"{self._where}: starting a producer", settings.hosts) from None

    def send(self, message: OutgoingMessage) -> None:
        if self._closed:
            raise ClosedError("producer is closed")
        self._backend.ensure_topics([message.topic])
        try:
            partition = None
            if message.key is None and self._settings.keyless == "sticky":
                partition = self._sticky.get(message.topic)
                if partition is None:
                    partition = self._pick_partition(message.topic)
            future = self._producer.send(
                message.topic,
                partition=partition,
                value=message.body,
                key=None if message.key is None else message.key.encode("utf-8"),
                headers=encode_headers(message),
                timestamp_ms=int(message.timestamp * 1000),
            )
        except Exception as exc:
            raise translate(exc, f"{self._where}: sending to {message.topic!r}",
                            self._settings.hosts) from None
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
        if self._closed:
            return
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
            error = translate(first, f"{self._where}: {len(failed)} message(s) were not stored",
                              self._settings.hosts)
            if isinstance(first, kerrors.KafkaTimeoutError):
                error = BrokerUnavailable(
                    f"{self._where}: {len(failed)} message(s) were not confirmed within "
                    f"delivery_timeout={self._settings.delivery_timeout:g} s ({first})"
                )
            raise error

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush(None)
        finally:
            self._closed = True
            try:
                self._producer.close(timeout=self._settings.delivery_timeout)
            except Exception as exc:  # pragma: no cover - close is best effort after flush
                log.debug("closing the producer failed: %s", exc)


__all__ = ["ID_HEADER", "KafkaProducerDriver", "MqkitError"]
