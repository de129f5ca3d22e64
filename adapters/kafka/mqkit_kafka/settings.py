"""The options of ``kafka://``, declared once, and what the URL itself says (hosts, SASL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mqkit.adapter import CONSUMER, PRODUCER, BrokerURL, option
from mqkit.errors import ConfigError
from mqkit.security import TLSOptions, client_context

DEFAULT_PORT = 9092
SASL_MECHANISMS = ("plain", "scram-sha-256", "scram-sha-512")


@dataclass(frozen=True)
class Settings(TLSOptions):
    """Options of ``kafka://`` (URL query, ``connect()``, and per producer/consumer where said);
    the TLS options (``tls``, ``ca_file``, ``cert_file``, ``key_file``,
    ``tls_insecure_skip_verify``) are the core's."""

    driver: str = option(
        "kafka-python",
        "The client library of producers and consumers: kafka-python, or confluent "
        "(confluent-kafka on librdkafka: pip install 'mqkit-kafka[confluent]').",
        choices=("kafka-python", "confluent"),
    )
    # -- topics -----------------------------------------------------------------------------
    partitions: int = option(
        3,
        "Partitions of the topics the adapter creates (competition within a group needs at "
        "least 2).",
        minimum=1,
    )
    replication_factor: int = option(1, "Replication of the topics the adapter creates.", minimum=1)
    create_topics: bool = option(True, "Create missing topics through the admin client.")
    max_message_bytes: int = option(
        8 << 20,
        "Bytes: the created topics' max.message.bytes and the producer's max_request_size; "
        "bodies up to 64 KiB less are accepted.",
        minimum=1024,
    )
    # -- connection -------------------------------------------------------------------------
    connect_timeout: float = option(
        8.0,
        "Seconds to wait for the bootstrap brokers or a topic's metadata before BrokerUnavailable.",
        minimum=0.5,
    )
    request_timeout: float = option(
        10.0, "Seconds kafka-python waits for one request.", minimum=1.0
    )
    client_id: str = option("mqkit", "Client id the broker sees.")
    sasl_mechanism: str = option(
        "plain",
        "SASL mechanism when the URL has user:password.",
        choices=SASL_MECHANISMS,
    )
    # -- producer ---------------------------------------------------------------------------
    linger_ms: int = option(
        5, "Milliseconds the producer waits to batch records.", minimum=0, scopes=[PRODUCER]
    )
    delivery_timeout: float = option(
        30.0,
        "Seconds the producer retries a record before flush() reports it failed (at least "
        "request_timeout + linger_ms).",
        minimum=1.0,
        scopes=[PRODUCER],
    )
    idempotence: bool = option(True, "Idempotent producer (off for brokers without it).")
    compression: str = option(
        "none", "Compression of record batches.", choices=("none", "gzip"), scopes=[PRODUCER]
    )
    keyless: str = option(
        "sticky",
        "Keyless messages: sticky sends a producer's messages of a topic to one partition "
        "(they stay in order); spread leaves them to kafka-python's partitioner (no order).",
        choices=("sticky", "spread"),
        scopes=[PRODUCER],
    )
    # -- consumer ---------------------------------------------------------------------------
    session_timeout: float = option(
        6.0,
        "Seconds of the group session (within the broker's group.min/max.session.timeout.ms: "
        "6 s to 30 min on Apache Kafka by default).",
        minimum=0.5,
        scopes=[CONSUMER],
    )
    heartbeat_interval: float | None = option(
        None,
        "Seconds between heartbeats, below session_timeout; default the smaller of 0.3 s and a "
        "third of session_timeout.",
        minimum=0.05,
        scopes=[CONSUMER],
    )
    rebalance_timeout: float = option(
        30.0,
        "Seconds of the JoinGroup rebalance timeout (kafka-python's max_poll_interval_ms).",
        minimum=1.0,
        scopes=[CONSUMER],
    )
    revoke_grace: float = option(
        2.0,
        "Seconds a rebalance waits for messages in flight on the partitions it takes away to "
        "be settled before committing; those still unsettled then go to the new owner again.",
        minimum=0.0,
        scopes=[CONSUMER],
    )
    join_timeout: float = option(
        30.0,
        "Seconds consumer() waits for the group to assign this member its partitions.",
        minimum=0.1,
        scopes=[CONSUMER],
    )
    offset_reset: str = option(
        "earliest",
        "Where a group without committed offsets starts.",
        choices=("earliest", "latest"),
        scopes=[CONSUMER],
    )
    throwaway: bool = option(
        False,
        "A group that lives as long as this consumer (request/reply inboxes): topics it "
        "creates get one partition, and close() deletes the group and those topics.",
        scopes=[CONSUMER],
    )
    # 2,000, not 500: the poller refills the buffer once the application has taken half of it,
    # and it needs the GIL for that, which it gets within the interpreter's switch interval
    # (5 ms). Half of 500 records took the application about 2 ms, so it emptied the buffer
    # and waited at every refill: 31,000 against 118,000 msg/s on confluent-kafka, 8,700
    # against 16,000 on kafka-python (docs/kafka.md, "Throughput").
    prefetch: int = option(
        2000, "Records buffered per consumer.", minimum=1, scopes=[CONSUMER]
    )
    ack_commit: str = option(
        "sync",
        "sync: ack() returns once its offset commit is confirmed; async: commits in the "
        "background at most every poll_interval, and on close and rebalance.",
        choices=("sync", "async"),
        scopes=[CONSUMER],
    )
    commit_timeout: float = option(
        10.0, "Seconds to wait for one offset commit.", minimum=0.1, scopes=[CONSUMER]
    )
    poll_interval: float = option(
        0.1,
        "Seconds between polls of the poller thread, and the fetch wait (fetch_max_wait_ms, at "
        "most 0.5 s): how long the broker may hold a fetch of partitions without new records.",
        minimum=0.01,
        scopes=[CONSUMER],
    )

    @property
    def heartbeat(self) -> float:
        """The heartbeat interval in seconds, the default derived from the session timeout."""
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        # Members learn of a rebalance (another member joining or leaving) with their next
        # heartbeat, and the rebalance waits for them: a group's next member joins in about
        # one interval (1 s made each extra member of an App's group cost a second).
        return min(0.3, self.session_timeout / 3)

    def check(self, where: str) -> None:
        """Refuse combinations of options that kafka-python would reject later, less clearly."""
        if self.tls_options_given() and not self.tls:
            raise ConfigError(
                f"{where}: ca_file, cert_file, key_file and tls_insecure_skip_verify need tls=true"
            )
        if self.heartbeat >= self.session_timeout:
            raise ConfigError(f"{where}: heartbeat_interval must be below session_timeout")
        if self.revoke_grace >= self.rebalance_timeout:
            raise ConfigError(
                f"{where}: revoke_grace must be below rebalance_timeout (the group would drop "
                "a member that waits that long)"
            )
        if self.delivery_timeout < self.request_timeout + self.linger_ms / 1000:
            raise ConfigError(
                f"{where}: delivery_timeout must be at least request_timeout + linger_ms"
            )


def hosts_of(url: BrokerURL) -> tuple[tuple[str, int], ...]:
    """The bootstrap brokers of a checked URL, 9092 where no port is given."""
    return tuple((host, port or DEFAULT_PORT) for host, port in url.hosts)


def check_url(url: BrokerURL) -> None:
    if not url.hosts:
        raise ConfigError(f"{url}: no broker given; write kafka://host:9092[,host2:9092…]")
    if url.path not in ("", "/"):
        raise ConfigError(f"{url}: a Kafka URL has no path; write kafka://host:9092")


def client_config(url: BrokerURL, settings: Settings, where: str) -> dict[str, Any]:
    """The connection settings every kafka-python client of this URL shares: with ``tls``, the
    core's TLS context (verification and host-name checking on unless explicitly off)."""
    config: dict[str, Any] = {
        "bootstrap_servers": [f"{host}:{port}" for host, port in hosts_of(url)],
        "client_id": settings.client_id,
        "security_protocol": "SSL" if settings.tls else "PLAINTEXT",
        "request_timeout_ms": ms(settings.request_timeout),
        "bootstrap_timeout_ms": ms(settings.connect_timeout),
        "reconnect_backoff_max_ms": 2000,
    }
    if settings.tls:
        config["ssl_context"] = client_context(settings, where)
    if url.username is not None:
        config.update(
            security_protocol="SASL_SSL" if settings.tls else "SASL_PLAINTEXT",
            sasl_mechanism=settings.sasl_mechanism.upper(),
            sasl_plain_username=url.username,
            sasl_plain_password=Secret(url.password or ""),
        )
    return config


class Secret(str):
    """A password that shows as ``***`` in a repr: kafka-python logs its whole configuration
    (``Starting KafkaAdminClient with configuration: …``) at DEBUG level."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds kafka-python takes (at least 1)."""
    return max(1, int(seconds * 1000))


def honour_auto_create(cluster: Any, allow: bool) -> None:
    """Make a client's ``allow_auto_create_topics`` count.

    kafka-python 3.0.12 builds a client's cluster metadata without that setting, so every
    Metadata request of its producers and consumers asks the broker to auto-create the topics
    (which a broker with ``auto.create.topics.enable=true``, Kafka's default, does with its
    default partition count). The setting is read from the metadata's own config.
    """
    config = getattr(cluster, "config", None)
    if isinstance(config, dict):
        config["allow_auto_create_topics"] = allow
