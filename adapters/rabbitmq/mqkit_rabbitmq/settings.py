"""The adapter's options, declared once, and where and how to connect (from the URL)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import pika

from mqkit.adapter import CONSUMER, PRODUCER, BrokerURL, option
from mqkit.adapter import Settings as BaseSettings
from mqkit.errors import ConfigError
from mqkit.security import TLSOptions, client_context

#: Most partition queues per group (each is a quorum queue: three open files on the broker).
MAX_PARTITIONS = 64


@dataclass(frozen=True)
class Settings(TLSOptions, BaseSettings):
    """Options of ``amqp://`` and ``amqps://`` (URL query, ``connect()``, per producer/consumer)."""

    connect_timeout: float = option(
        5.0, "Seconds to establish a connection (TCP + AMQP handshake).", minimum=0.1
    )
    heartbeat: int = option(30, "AMQP heartbeat in seconds (0: off).", minimum=0)
    reconnect_timeout: float = option(
        120.0,
        "After a connection is lost, clients reconnect on their own; if it stays down longer "
        "than this many seconds, send/flush/receive raise BrokerUnavailable (reconnecting "
        "continues).",
        minimum=0.0,
    )
    prefetch: int = option(
        16,
        "Unacked messages per queue consumer (the shared queue and each partition).",
        minimum=1,
        scopes=[CONSUMER],
    )
    partitions: int = option(
        4,
        f"Partition queues per topic and group (1 to {MAX_PARTITIONS}); the same value for every "
        "member of a group, fixed when the group is created. 0: one queue bound to the topic, "
        "whose members compete: faster, but no key order across members.",
        minimum=0,
        maximum=MAX_PARTITIONS,
        scopes=[CONSUMER],
    )
    queue_expires: float = option(
        0.0,
        "Seconds after which RabbitMQ deletes a group's queues that nobody uses (x-expires; "
        "0: never); for tests and throw-away groups.",
        minimum=0.0,
        scopes=[CONSUMER],
    )
    queue: str = option(
        "",
        "Consume this existing queue as it is (declared by someone else, of any type) instead "
        "of the group's own queues: nothing is declared or bound; the group's members compete "
        "for its messages in the queue's own order (see docs/rabbitmq.md).",
        scopes=[CONSUMER],
    )
    binding_keys: str = option(
        "",
        "Comma-separated binding keys by which the group binds to the topic's exchange "
        "(default: every message; needed for an existing direct exchange; ignored by fanout "
        "and headers exchanges).",
        scopes=[CONSUMER],
    )
    rebalance_interval: float = option(
        0.25,
        "Seconds between a member's membership checks (each covers up to 8 topics of a "
        "multi-topic consumer, round robin; topics named by a join/release signal are checked "
        "at once).",
        minimum=0.01,
    )
    max_buffer: int = option(
        10_000,
        "Messages sent but not yet confirmed before send blocks.",
        minimum=1,
        scopes=[PRODUCER],
    )
    max_inflight: int = option(
        1_000, "Published messages awaiting confirms.", minimum=1, scopes=[PRODUCER]
    )


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: the URL's hosts, vhost, credentials and TLS, with the
    connection options; every producer and consumer connects through it."""

    hosts: tuple[tuple[str, int], ...]
    vhost: str
    username: str
    password: str = field(repr=False)
    tls: ssl.SSLContext | None
    connect_timeout: float
    heartbeat: int

    @classmethod
    def of(cls, url: BrokerURL, settings: Settings) -> Endpoint:
        """The endpoint of ``url``; ``ConfigError`` for what cannot work."""
        secure = url.scheme == "amqps" or settings.tls
        if not url.hosts:
            raise ConfigError(
                f"{url}: no host; write e.g. amqp://guest:guest@127.0.0.1:5672/ (vhost after the /)"
            )
        default_port = 5671 if secure else 5672
        path = url.path[1:] if url.path.startswith("/") else url.path
        context: ssl.SSLContext | None = None
        if secure:
            context = client_context(settings, str(url))
        elif settings.tls_options_given():
            raise ConfigError(
                f"{url}: the TLS options (ca_file, cert_file, key_file, tls_insecure_skip_verify) "
                "need TLS: an amqps:// URL or tls=true"
            )
        return cls(
            hosts=tuple((host, port or default_port) for host, port in url.hosts),
            vhost=path or "/",
            username=url.username if url.username is not None else "guest",
            password=url.password if url.password is not None else "guest",
            tls=context,
            connect_timeout=settings.connect_timeout,
            heartbeat=settings.heartbeat,
        )

    def where(self, index: int = 0) -> str:
        """The host ``index`` (round robin) for messages: never the password."""
        host, port = self.hosts[index % len(self.hosts)]
        return f"RabbitMQ at {host}:{port} (vhost {self.vhost!r})"

    def parameters(self, index: int = 0) -> pika.ConnectionParameters:
        """pika's parameters for host ``index`` (round robin): one attempt, bounded waits."""
        host, port = self.hosts[index % len(self.hosts)]
        extra: dict[str, Any] = {}
        if self.tls is not None:
            extra["ssl_options"] = pika.SSLOptions(self.tls, server_hostname=host)
        return pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.username, self.password),
            heartbeat=self.heartbeat,
            connection_attempts=1,
            socket_timeout=self.connect_timeout,
            stack_timeout=self.connect_timeout,
            blocked_connection_timeout=None,
            client_properties={"connection_name": f"mqkit {socket.gethostname()}"},
            **extra,
        )
