"""The second driver of ``kafka://``: producer and consumer on confluent-kafka (librdkafka).

Chosen with ``driver=confluent`` (``pip install 'mqkit-kafka[confluent]'``); kafka-python stays
the default. Only the hot path changes: the backend (topic creation, lag, ping) keeps its
kafka-python admin client, the envelope is :mod:`mqkit_kafka.wire`'s and the group member's
bookkeeping is :mod:`mqkit_kafka._member`'s, so both drivers give the same guarantees:

- producer: ``acks=all``, idempotence, ``flush()`` returns once every record is confirmed;
  librdkafka batches and sends on its own threads, ``send()`` only queues;
- consumer: rebalance callbacks run inside the poller thread's ``consume()`` (librdkafka serves
  them there), a sync ``ack()`` commits with the blocking ``commit()`` in the acking thread.
"""

from __future__ import annotations

import logging
import operator
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kafka import TopicPartition  # type: ignore[import-untyped]

from mqkit.adapter import Delivery, OutgoingMessage, ProducerBase
from mqkit.errors import (
    AuthenticationError,
    BrokerUnavailable,
    ConfigError,
    DeliveryTimeout,
    MqkitError,
    PermissionDenied,
    TLSError,
)
from mqkit_kafka import wire
from mqkit_kafka._errors import probe
from mqkit_kafka._member import GroupMember, Handle, Records
from mqkit_kafka.settings import Settings, hosts_of, ms

if TYPE_CHECKING:
    from mqkit.adapter import BrokerURL
    from mqkit_kafka.backend import Backend

log = logging.getLogger("mqkit.kafka.confluent")
INSTALL = "pip install 'mqkit-kafka[confluent]'"
#: librdkafka releases whose commit() hangs while the poller thread is inside consume().
BROKEN = frozenset({"2.16.0", "2.16.1", "2.16.2"})


def load() -> Any:
    """The ``confluent_kafka`` module, or a ConfigError saying how to install it."""
    try:
        import confluent_kafka
    except ImportError:
        raise ConfigError(
            f"kafka:// with driver=confluent needs the confluent-kafka client: {INSTALL}"
        ) from None
    release = confluent_kafka.libversion()[0]
    if release in BROKEN:
        raise ConfigError(
            f"kafka:// with driver=confluent: librdkafka {release} is not supported (a commit "
            f"from one thread never returns while another consumes); {INSTALL} installs a "
            "release that works"
        )
    return confluent_kafka


def client_config(url: BrokerURL, settings: Settings) -> dict[str, Any]:
    """librdkafka's connection settings for ``url``: the same hosts, TLS and SASL as the
    kafka-python driver's :func:`mqkit_kafka.settings.client_config`."""
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(f"{host}:{port}" for host, port in hosts_of(url)),
        "client.id": settings.client_id,
        "socket.timeout.ms": ms(settings.request_timeout),
        "reconnect.backoff.max.ms": 2000,
        "security.protocol": "ssl" if settings.tls else "plaintext",
        # librdkafka logs through this logger (served by poll), not to stderr.
        "logger": logging.getLogger("mqkit.kafka.librdkafka"),
    }
    if settings.tls:
        if settings.ca_file:
            config["ssl.ca.location"] = settings.ca_file
        if settings.cert_file:
            config["ssl.certificate.location"] = settings.cert_file
        if settings.key_file:
            config["ssl.key.location"] = settings.key_file
        verify = not settings.tls_insecure_skip_verify
        config["enable.ssl.certificate.verification"] = verify
        config["ssl.endpoint.identification.algorithm"] = "https" if verify else "none"
    if url.username is not None:
        config.update(
            {
                "security.protocol": "sasl_ssl" if settings.tls else "sasl_plaintext",
                "sasl.mechanism": settings.sasl_mechanism.upper(),
                "sasl.username": url.username,
                "sasl.password": url.password or "",
            }
        )
    return config


def translate(exc: BaseException, where: str, hosts: Any) -> MqkitError:
    """An mqkit error for a confluent-kafka exception (a ``KafkaException`` wraps a
    ``KafkaError`` whose code says what happened)."""
    if isinstance(exc, MqkitError):
        return exc
    ck = load()
    error = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
    if error is None:
        if isinstance(exc, BufferError):
            return BrokerUnavailable(f"{where}: the producer's queue is full ({exc})")
        return MqkitError(f"{where}: {type(exc).__name__}: {exc}")
    return from_error(error, where, hosts)


def from_error(error: Any, where: str, hosts: Any) -> MqkitError:
    """An mqkit error for a librdkafka ``KafkaError``."""
    ck = load()
    code, text = error.code(), error.str()
    e = ck.KafkaError
    if code == e._SSL:
        return TLSError(f"{where}: TLS failed: {text}")
    if code in (e._AUTHENTICATION, e.SASL_AUTHENTICATION_FAILED):
        return AuthenticationError(f"{where}: the broker refused our credentials ({text})")
    if code in (
        e.TOPIC_AUTHORIZATION_FAILED,
        e.GROUP_AUTHORIZATION_FAILED,
        e.CLUSTER_AUTHORIZATION_FAILED,
    ):
        return PermissionDenied(
            f"{where}: not authorized ({error.name()}); the user needs an ACL for it on the broker"
        )
    if code == e.INVALID_SESSION_TIMEOUT:
        return ConfigError(
            f"{where}: the broker refused session_timeout: it must lie within the broker's "
            "group.min.session.timeout.ms and group.max.session.timeout.ms (Apache Kafka's "
            "defaults: 6 s and 30 min)"
        )
    if code in (e._INVALID_ARG, e._UNKNOWN_TOPIC, e._NOT_IMPLEMENTED):
        return ConfigError(f"{where}: {text}")
    if code in (e._TRANSPORT, e._ALL_BROKERS_DOWN, e._TIMED_OUT, e._MSG_TIMED_OUT, e._RESOLVE):
        return BrokerUnavailable(f"{where}: broker not reachable ({probe(hosts) or text})")
    if code == e.MSG_SIZE_TOO_LARGE or code == e._MSG_SIZE_TOO_LARGE:
        return MqkitError(f"{where}: message too large ({text}); raise max_message_bytes")
    return MqkitError(f"{where}: {error.name()}: {text}")


class ConfluentProducer(ProducerBase):
    """``send`` queues a record in librdkafka; ``flush`` waits until every one is confirmed."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        super().__init__()
        ck = load()
        self._backend = backend
        self._settings = settings
        self._where = backend.where
        self._hosts = backend.hosts
        self._lock = threading.Lock()
        self._failed: list[Any] = []  # KafkaErrors of records that were not stored
        self._sticky: dict[str, int] = {}
        self._sticky_keyless = settings.keyless == "sticky"
        config = client_config(backend.url, settings)
        config.update(
            {
                "acks": "all",
                "enable.idempotence": settings.idempotence,
                "linger.ms": settings.linger_ms,
                "delivery.timeout.ms": ms(settings.delivery_timeout),
                "request.timeout.ms": ms(settings.request_timeout),
                "message.max.bytes": settings.max_message_bytes,
                "compression.type": settings.compression,
                # a key goes to the partition the Java client and kafka-python pick (murmur2),
                # not to librdkafka's default (CRC32): one key, one partition, whoever sends
                "partitioner": "murmur2_random",
                "on_delivery": self._delivered,
                # only failures are reported: flush() raises them, the rest needs no callback
                # (a Python call per record took about as long as producing it)
                "delivery.report.only.error": True,
            }
        )
        try:
            self._producer = ck.Producer(config)
        except Exception as exc:
            raise translate(exc, f"{self._where}: starting a producer", self._hosts) from None

    def _delivered(self, error: Any, _record: Any) -> None:
        """librdkafka's report for one record (served by ``poll``/``flush``)."""
        if error is not None:
            with self._lock:
                self._failed.append(error)

    def send(self, message: OutgoingMessage) -> None:
        topic = message.topic
        self._backend.ensure_topic(topic)
        key, headers, timestamp_ms = wire.encode(message)
        producer = self._producer
        try:
            partition = -1  # librdkafka's partitioner (murmur2 of the key)
            if key is None and self._sticky_keyless:
                partition = self._sticky.get(topic, -1)
                if partition == -1:
                    partition = self._pick_partition(topic)
            try:
                producer.produce(
                    topic,
                    message.body,
                    key,
                    partition=partition,
                    timestamp=timestamp_ms,
                    headers=headers,
                )
            except BufferError:
                self._produce_when_room(topic, message.body, key, headers, timestamp_ms, partition)
        except Exception as exc:
            raise translate(exc, f"{self._where}: sending to {topic!r}", self._hosts) from None
        producer.poll(0)  # serve delivery reports of earlier records

    def _produce_when_room(
        self,
        topic: str,
        body: bytes,
        key: bytes | None,
        headers: wire.RecordHeaders,
        timestamp_ms: int,
        partition: int,
    ) -> None:
        """Queue one record that found librdkafka's queue full: serve the queue and try again,
        up to connect_timeout."""
        producer = self._producer
        deadline = time.monotonic() + self._settings.connect_timeout
        while True:
            producer.poll(0.05)
            try:
                producer.produce(
                    topic,
                    body,
                    key,
                    partition=partition,
                    timestamp=timestamp_ms,
                    headers=headers,
                )
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"{self._where}: sending to {topic!r}: the producer's queue stayed full "
                        f"for connect_timeout={self._settings.connect_timeout:g} s (the broker "
                        "does not take records as fast as they are sent)"
                    ) from None

    def _pick_partition(self, topic: str) -> int:
        """One partition per topic for this producer's keyless messages, so they stay in order."""
        meta = self._producer.list_topics(topic, timeout=self._settings.connect_timeout)
        partitions = meta.topics[topic].partitions if topic in meta.topics else {}
        if not partitions:
            raise MqkitError(f"{self._where}: topic {topic!r} has no partitions")
        choice: int = random.choice(sorted(partitions))
        self._sticky[topic] = choice
        return choice

    def flush(self, timeout: float | None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise DeliveryTimeout(
                f"{self._where}: the broker did not confirm every message within {timeout} s "
                f"({left} still waiting)"
            )
        with self._lock:
            failed, self._failed = self._failed, []
        if failed:
            first = failed[0]
            where = f"{self._where}: {len(failed)} message(s) were not stored"
            if first.code() == load().KafkaError._MSG_TIMED_OUT:
                raise BrokerUnavailable(
                    f"{where}: not confirmed within "
                    f"delivery_timeout={self._settings.delivery_timeout:g} s ({first.str()})"
                )
            raise from_error(first, where, self._hosts)

    def _close(self) -> None:
        self.flush(None)  # librdkafka's producer has no close: it goes with the object


class ConfluentConsumer(GroupMember):
    """A group member on confluent-kafka's ``Consumer``."""

    _offset_of = operator.methodcaller("offset")

    def _open(self) -> None:
        backend, settings = self._backend, self._settings
        ck = self._ck = load()
        self._paused: set[TopicPartition] = set()
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        config = client_config(backend.url, settings)
        config.update(
            {
                "group.id": self._group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": settings.offset_reset,
                "session.timeout.ms": ms(settings.session_timeout),
                "heartbeat.interval.ms": ms(settings.heartbeat),
                "max.poll.interval.ms": max(
                    ms(settings.rebalance_timeout), ms(settings.session_timeout)
                ),
                "fetch.wait.max.ms": min(500, ms(settings.poll_interval)),
                # librdkafka fetches ahead into its own queue until it holds this many records
                # (default 100,000, up to 64 MiB); then it waits fetch.queue.backoff.ms before
                # the next fetch (default 1 s: with a small queue, about 900 records of 1 KiB
                # per second). A few fetches' worth, and a wait of one poll interval.
                "queued.min.messages": max(10_000, 4 * settings.prefetch),
                "queued.max.messages.kbytes": 16 * 1024,
                "fetch.queue.backoff.ms": ms(settings.poll_interval),
                "allow.auto.create.topics": False,
                "error_cb": self._client_error,
            }
        )
        try:
            self._consumer = ck.Consumer(config)
            self._consumer.subscribe(
                list(self._topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except Exception as exc:
            raise translate(exc, f"{self._where}: starting a consumer", self._hosts) from None

    # -- callbacks (served inside consume(), on the poller thread) ---------------------------

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        assigned = {self._tp(p.topic, p.partition): p for p in partitions}
        resumes = self._assigned(set(assigned))
        if resumes:
            # librdkafka starts an assigned partition at the given offset: no seek needed.
            with self._lock:
                for tp, offset in resumes.items():
                    assigned[tp].offset = offset
                    self._seeks.pop(tp, None)
        consumer.assign(partitions)
        self._paused.difference_update(assigned)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        revoked = {self._tp(p.topic, p.partition) for p in partitions}
        self._drain(revoked)  # librdkafka heartbeats on its own thread meanwhile
        offsets = self._revoke(revoked)
        if offsets:
            try:
                self._commit_now(offsets)
                self._note_committed(offsets)
            except Exception as exc:
                self._revoke_commit_failed(offsets, exc)
        consumer.unassign()
        self._paused.clear()

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._revoke({self._tp(p.topic, p.partition) for p in partitions}, lost=True)
        consumer.unassign()
        self._paused.clear()

    def _client_error(self, error: Any) -> None:
        """librdkafka's global errors: a failed login or TLS handshake fails a join under way;
        the rest (a broker going away and coming back) it retries by itself."""
        failure = from_error(error, f"{self._where}: polling", self._hosts)
        refused = isinstance(failure, AuthenticationError | TLSError) and not self._joined
        if refused or error.fatal():
            self._fail(failure)
        log.warning("%s", failure)

    # -- the client primitives ----------------------------------------------------------------

    def _client_poll(self, timeout: float, max_records: int) -> Records:
        records: dict[TopicPartition, list[Any]] = {}
        # Not consume(max_records, timeout) alone: librdkafka's batch consume waits out the
        # whole timeout unless the batch fills, which at low rates delayed every message by up
        # to poll_interval. The first record (or event) is waited for, the rest taken as found.
        first = self._consumer.poll(timeout)
        if first is None:
            return records
        batch = [first]
        if max_records > 1:
            batch += self._consumer.consume(max_records - 1, 0)
        last: tuple[str, int] | None = None
        current: list[Any] = []
        for record in batch:
            if record.error() is not None:
                self._record_error(record.error())
                continue
            where = (record.topic(), record.partition())
            if where != last:
                current = records.setdefault(self._tp(*where), [])
                last = where
            current.append(record)
        return records

    def _record_error(self, error: Any) -> None:
        if error.code() == self._ck.KafkaError._PARTITION_EOF:
            return
        failure = from_error(error, f"{self._where}: fetching", self._hosts)
        if isinstance(failure, AuthenticationError | TLSError | PermissionDenied):
            raise failure
        log.warning("%s", failure)

    def _client_seek(self, tp: TopicPartition, offset: int) -> bool:
        ck = self._ck
        try:
            self._consumer.seek(ck.TopicPartition(tp.topic, tp.partition, offset))
        except ck.KafkaException as exc:
            code = exc.args[0].code()
            if code == ck.KafkaError._UNKNOWN_PARTITION:
                return True  # revoked meanwhile; the new owner starts from the commit
            log.debug("%s: seeking %s to %d: %s; retrying", self._where, tp, offset, exc)
            return False  # not fetching yet (_STATE): after the next poll
        return True

    def _client_paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def _client_pause(self, tp: TopicPartition) -> None:
        self._consumer.pause([self._ck.TopicPartition(tp.topic, tp.partition)])
        self._paused.add(tp)

    def _client_resume(self, tp: TopicPartition) -> None:
        self._consumer.resume([self._ck.TopicPartition(tp.topic, tp.partition)])
        self._paused.discard(tp)

    def _client_position(self, tp: TopicPartition) -> int | None:
        ck = self._ck
        timeout = self._settings.commit_timeout
        wanted = ck.TopicPartition(tp.topic, tp.partition)
        committed = self._consumer.committed([wanted], timeout=timeout)[0]
        if committed.error is None and committed.offset >= 0:
            offset: int = committed.offset
            return offset
        low, high = self._consumer.get_watermark_offsets(wanted, timeout=timeout)
        return int(low if self._settings.offset_reset == "earliest" else high)

    def _commit_now(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` and wait for the broker's answer (any thread may call it)."""
        ck = self._ck
        result = self._consumer.commit(
            offsets=[ck.TopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()],
            asynchronous=False,
        )
        failed = [p.error for p in result or () if p.error is not None]
        if failed:
            raise ck.KafkaException(failed[0])

    def _client_commit(
        self, offsets: dict[TopicPartition, int], finished: Callable[[object], None]
    ) -> None:
        try:
            self._commit_now(offsets)
        except Exception as exc:
            finished(translate(exc, f"{self._where}: committing", self._hosts))
        else:
            finished(None)

    def _client_close(self) -> None:
        self._consumer.close()

    def _translate(self, exc: BaseException, where: str) -> MqkitError:
        return translate(exc, where, self._hosts)

    def _decode(self, tp: TopicPartition, record: Any, attempt: int, handle: Handle) -> Delivery:
        return wire.decode_confluent(tp.topic, tp.partition, record, attempt, handle)
