"""``kafka://host:port[,host:port…]``: the backend object, its settings and topic creation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient  # type: ignore[import-untyped]
from kafka import errors as kerrors

from mqkit.config import BrokerURL
from mqkit.errors import ClosedError, ConfigError, MqkitError
from mqkit.options import Options
from mqkit.spi import Features
from mqkit_kafka._errors import translate

if TYPE_CHECKING:
    from mqkit_kafka.consumer import KafkaConsumerDriver
    from mqkit_kafka.producer import KafkaProducerDriver

log = logging.getLogger("mqkit_kafka")

DEFAULT_PORT = 9092
SASL_MECHANISMS = ("plain", "scram-sha-256", "scram-sha-512")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the adapter reads from the URL and options, checked once."""

    hosts: tuple[tuple[str, int], ...]
    where: str  # the URL without password, for messages
    client_kwargs: Mapping[str, Any]  # connection settings shared by every kafka-python client
    connect_timeout: float
    # topics
    create_topics: bool
    partitions: int
    replication_factor: int
    max_message_bytes: int
    # producer
    linger_ms: int
    delivery_timeout: float
    idempotence: bool
    compression: str
    keyless: str
    # consumer
    session_timeout: float
    heartbeat_interval: float
    rebalance_timeout: float
    join_timeout: float
    offset_reset: str
    prefetch: int
    ack_commit: str
    commit_timeout: float
    poll_interval: float

    @property
    def bootstrap(self) -> list[str]:
        return [f"{host}:{port}" for host, port in self.hosts]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def parse_settings(url: BrokerURL, options: Mapping[str, Any]) -> tuple[Settings, Options]:
    if not url.hosts:
        raise ConfigError(f"{url}: no broker given; write kafka://host:9092[,host2:9092…]")
    if url.path not in ("", "/"):
        raise ConfigError(f"{url}: a Kafka URL has no path; write kafka://host:9092")
    hosts = tuple((host, port or DEFAULT_PORT) for host, port in url.hosts)
    opts = Options(str(url), options)
    tls = opts.bool("tls", False)
    client: dict[str, Any] = {
        "bootstrap_servers": [f"{h}:{p}" for h, p in hosts],
        "client_id": opts.str("client_id", "mqkit"),
        "security_protocol": "SSL" if tls else "PLAINTEXT",
    }
    ca_file = opts.str("ca_file", "")
    if ca_file:
        client["ssl_cafile"] = ca_file
    mechanism = opts.choice("sasl_mechanism", "plain", SASL_MECHANISMS)
    if url.username is not None:
        client.update(
            security_protocol="SASL_SSL" if tls else "SASL_PLAINTEXT",
            sasl_mechanism=mechanism.upper(),
            sasl_plain_username=url.username,
            sasl_plain_password=url.password or "",
        )
    connect_timeout = opts.float("connect_timeout", 8.0, minimum=0.5)
    session_timeout = opts.float("session_timeout", 6.0, minimum=0.5)
    heartbeat = opts.float("heartbeat_interval", min(1.0, session_timeout / 3), minimum=0.05)
    if heartbeat >= session_timeout:
        raise ConfigError(f"{url}: heartbeat_interval must be below session_timeout")
    request_timeout = opts.float("request_timeout", 10.0, minimum=1.0)
    client.update(
        request_timeout_ms=_ms(request_timeout),
        bootstrap_timeout_ms=_ms(connect_timeout),
        reconnect_backoff_max_ms=2000,
    )
    settings = Settings(
        hosts=hosts,
        where=str(url),
        client_kwargs=client,
        connect_timeout=connect_timeout,
        create_topics=opts.bool("create_topics", True),
        partitions=opts.int("partitions", 3, minimum=1),
        replication_factor=opts.int("replication_factor", 1, minimum=1),
        max_message_bytes=opts.int("max_message_bytes", 8 << 20, minimum=1024),
        linger_ms=opts.int("linger_ms", 5),
        delivery_timeout=opts.float("delivery_timeout", 30.0, minimum=1.0),
        idempotence=opts.bool("idempotence", True),
        compression=opts.choice("compression", "none", ("none", "gzip")),
        keyless=opts.choice("keyless", "sticky", ("sticky", "spread")),
        session_timeout=session_timeout,
        heartbeat_interval=heartbeat,
        rebalance_timeout=opts.float("rebalance_timeout", 30.0, minimum=1.0),
        join_timeout=opts.float("join_timeout", 30.0, minimum=0.1),
        offset_reset=opts.choice("offset_reset", "earliest", ("earliest", "latest")),
        prefetch=opts.int("prefetch", 500, minimum=1),
        ack_commit=opts.choice("ack_commit", "sync", ("sync", "async")),
        commit_timeout=opts.float("commit_timeout", 10.0, minimum=0.1),
        poll_interval=opts.float("poll_interval", 0.1, minimum=0.01),
    )
    if settings.delivery_timeout < request_timeout + settings.linger_ms / 1000:
        raise ConfigError(f"{url}: delivery_timeout must be at least request_timeout + linger_ms")
    return settings, opts


def override(settings: Settings, where: str, options: Mapping[str, Any]) -> Settings:
    """Per-producer/consumer options on top of the backend's settings."""
    opts = Options(where, options)
    out = replace(
        settings,
        linger_ms=opts.int("linger_ms", settings.linger_ms),
        delivery_timeout=opts.float("delivery_timeout", settings.delivery_timeout, minimum=1.0),
        compression=opts.choice("compression", settings.compression, ("none", "gzip")),
        keyless=opts.choice("keyless", settings.keyless, ("sticky", "spread")),
        session_timeout=opts.float("session_timeout", settings.session_timeout, minimum=0.5),
        heartbeat_interval=opts.float(
            "heartbeat_interval", settings.heartbeat_interval, minimum=0.05
        ),
        rebalance_timeout=opts.float("rebalance_timeout", settings.rebalance_timeout, minimum=1),
        join_timeout=opts.float("join_timeout", settings.join_timeout, minimum=0.1),
        offset_reset=opts.choice(
            "offset_reset", settings.offset_reset, ("earliest", "latest")
        ),
        prefetch=opts.int("prefetch", settings.prefetch, minimum=1),
        ack_commit=opts.choice("ack_commit", settings.ack_commit, ("sync", "async")),
        commit_timeout=opts.float("commit_timeout", settings.commit_timeout, minimum=0.1),
        poll_interval=opts.float("poll_interval", settings.poll_interval, minimum=0.01),
    )
    opts.done()
    if out.heartbeat_interval >= out.session_timeout:
        raise ConfigError(f"{where}: heartbeat_interval must be below session_timeout")
    return out


class KafkaBackend:
    """One Kafka cluster: an admin client for topic creation plus producer/consumer factories."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.features = Features(
            # A nack seeks the partition back, so later messages of its key wait for it.
            key_order_on_nack=True,
            # Kafka cannot delay one record; the core's retry helper uses retry topics instead.
            delayed_redelivery=False,
            persistent=True,
            max_body_size=settings.max_message_bytes - (64 << 10),
        )
        self._lock = threading.Lock()
        self._known_topics: set[str] = set()
        self._closed = False
        try:
            self._admin = KafkaAdminClient(**settings.client_kwargs)
        except Exception as exc:
            raise translate(exc, f"{settings.where}: connecting", settings.hosts) from None

    # -- topics ----------------------------------------------------------------------------

    def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create missing topics with the configured partition count (once per process)."""
        if not self.settings.create_topics or all(t in self._known_topics for t in topics):
            return
        with self._lock:
            missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
            if not missing:
                return
            spec = {
                name: {
                    "num_partitions": self.settings.partitions,
                    "replication_factor": self.settings.replication_factor,
                    "configs": {"max.message.bytes": str(self.settings.max_message_bytes)},
                }
                for name in missing
            }
            try:
                result = self._admin.create_topics(spec, raise_errors=False)
            except Exception as exc:
                raise translate(
                    exc, f"{self.settings.where}: creating topic(s) {', '.join(missing)}",
                    self.settings.hosts,
                ) from None
            for entry in result.get("topics", []):
                code = entry.get("error_code", 0)
                if code and code != kerrors.TopicAlreadyExistsError.errno:
                    error = kerrors.for_code(code)
                    raise MqkitError(
                        f"{self.settings.where}: creating topic {entry.get('name')!r} failed: "
                        f"{error.__name__} {entry.get('error_message') or ''}".rstrip()
                    )
            self._wait_for_metadata(missing)
            self._known_topics.update(missing)

    def _wait_for_metadata(self, topics: list[str]) -> None:
        """Wait until the broker's metadata shows the topics with a leader for every partition.

        Apache Kafka confirms CreateTopics once the controller has committed the topic; the
        brokers learn of it a moment later. A consumer subscribing in between gets no partition
        of it in its first assignment (``consumer()`` would return owning nothing) and the group
        rebalances when the metadata catches up. Not fatal if it takes longer than
        ``connect_timeout``: kafka-python picks the partitions up when they appear.
        """
        try:
            self._admin.wait_for_topics(topics, timeout_ms=_ms(self.settings.connect_timeout))
        except kerrors.KafkaTimeoutError as exc:
            log.warning("%s: %s; continuing", self.settings.where, exc)

    @property
    def admin(self) -> Any:
        """The kafka-python admin client (for tests and advanced use)."""
        return self._admin

    # -- factories -------------------------------------------------------------------------

    def producer(self, options: Mapping[str, Any]) -> KafkaProducerDriver:
        from mqkit_kafka.producer import KafkaProducerDriver

        self._check_open()
        settings = override(self.settings, f"{self.settings.where} producer", options)
        return KafkaProducerDriver(self, settings)

    def consumer(
        self, topics: Sequence[str], group: str, options: Mapping[str, Any]
    ) -> KafkaConsumerDriver:
        from mqkit_kafka.consumer import KafkaConsumerDriver

        self._check_open()
        settings = override(self.settings, f"{self.settings.where} consumer", options)
        self.ensure_topics(topics)
        return KafkaConsumerDriver(settings, tuple(topics), group)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"broker {self.settings.where} is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._admin.close()
        except Exception as exc:  # closing must not fail the caller
            log.debug("closing the admin client failed: %s", exc)
