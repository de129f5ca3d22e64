"""Options of ``rocketmq://`` (RocketMQ 5 through its gRPC proxy), declared once."""

from __future__ import annotations

from dataclasses import dataclass

from mqkit import adapter
from mqkit.adapter import CONSUMER, PRODUCER, BrokerURL, option
from mqkit.errors import ConfigError
from mqkit.security import TLSOptions

DEFAULT_PORT = 8081
#: RocketMQ pops at most this many messages per receive.
MAX_BATCH = 32


@dataclass(frozen=True)
class Settings(TLSOptions, adapter.Settings):
    connect_timeout: float = option(
        5.0,
        "Seconds for the connect probe, topic lookups and retries while the proxy is unreachable.",
        minimum=0.1,
    )
    subscribe_timeout: float = option(
        30.0,
        "Seconds a new consumer waits for the proxy to confirm its subscription.",
        minimum=0.1,
    )
    request_timeout: int = option(3, "The client's timeout per request, in seconds.", minimum=1)
    visibility_timeout: int = option(
        30,
        "Seconds a received message stays invisible to the group (a proxy refuses less "
        "than 10 by default).",
        minimum=1,
        scopes=[CONSUMER],
    )
    prefetch: int = option(
        16,
        f"Most messages per poll (at most {MAX_BATCH}); in a concurrent group polls start at "
        "one and double while the consumer keeps up.",
        minimum=1,
        scopes=[CONSUMER],
    )
    long_polling_timeout: int = option(
        5, "Seconds one poll waits on the proxy.", minimum=1, scopes=[CONSUMER]
    )
    temporary: bool = option(
        False,
        "The group lives only as long as this consumer (a request's reply inbox): its topic "
        "and group are created through namesrv if missing and deleted when it closes.",
        scopes=[CONSUMER],
    )
    max_in_flight: int = option(
        1024, "Unconfirmed sends per producer before send() blocks.", minimum=1, scopes=[PRODUCER]
    )
    namesrv: str | None = option(
        None,
        "The cluster's name server, HOST:PORT: new consumer groups start where they "
        "subscribed; needed by auto_create.",
    )
    auto_create: bool = option(
        False,
        "Create missing topics (MIXED) and consumer groups (FIFO) through namesrv, for "
        "development and test clusters.",
    )


def check_prefetch(where: str, prefetch: int) -> None:
    if prefetch > MAX_BATCH:
        raise ConfigError(f"{where}: prefetch={prefetch}: RocketMQ pops at most {MAX_BATCH}")


def endpoints(url: BrokerURL) -> list[str]:
    """``host:port`` of every proxy in the URL (port 8081 unless given)."""
    if not url.hosts:
        raise ConfigError(
            f"{url.redacted()}: no proxy address; write rocketmq://host:{DEFAULT_PORT} (the gRPC "
            "endpoint of a RocketMQ 5 proxy)"
        )
    addresses = []
    for host, port in url.hosts:
        if ":" in host:
            raise ConfigError(
                f"{url.redacted()}: the RocketMQ client cannot reach IPv6 literals; use a host name"
            )
        addresses.append(f"{host}:{port or DEFAULT_PORT}")
    return addresses
