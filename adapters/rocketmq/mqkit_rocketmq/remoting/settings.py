"""Options of ``rocketmq+remoting://``, declared once."""

from __future__ import annotations

from dataclasses import dataclass

from mqkit import adapter
from mqkit.adapter import CONSUMER, BrokerURL, option
from mqkit.errors import ConfigError
from mqkit.security import TLSOptions

DEFAULT_PORT = 9876


@dataclass(frozen=True)
class Settings(TLSOptions, adapter.Settings):
    auto_create: bool = option(
        False,
        "Create missing topics (MIXED, 8 queues) before a producer first sends to one and "
        "before a consumer subscribes, and the consumer group (FIFO), through the URL's name "
        "servers; for development and test clusters.",
    )
    connect_timeout: float = option(
        5.0,
        "Seconds for the connect probe and the admin requests (positions, locks, topic lookups).",
        minimum=0.1,
    )
    send_timeout: float = option(
        3.0,
        "librocketmq's send timeout in seconds; a send gives up after send_timeout + "
        "connect_timeout.",
        minimum=0.1,
    )
    prefetch: int = option(
        16,
        "Native consume threads: a consumer holds at most one unsettled message per queue, "
        "and at most this many in all.",
        minimum=1,
        scopes=[CONSUMER],
    )
    temporary: bool = option(
        False,
        "The group lives only as long as this consumer (a request's reply inbox): its topic "
        "and group are created if missing and deleted when it closes.",
        scopes=[CONSUMER],
    )
    orderly: bool = option(
        True,
        "false is refused: librocketmq's concurrent push consumer settles a pulled batch (up "
        "to 32 messages) as a whole.",
    )
    producer_group: str = option(
        "mqkit-producer",
        "The producers' group (each producer has a client instance of its own).",
    )
    channel: str = option("", "ACL channel, with ak:sk@ credentials in the URL.")


def name_servers(url: BrokerURL) -> list[tuple[str, int]]:
    """``(host, port)`` of every name server in the URL (port 9876 unless given)."""
    if not url.hosts:
        raise ConfigError(
            f"{url}: no name server; write rocketmq+remoting://namesrv:{DEFAULT_PORT}"
        )
    return [(h, p or DEFAULT_PORT) for h, p in url.hosts]
