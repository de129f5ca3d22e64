"""The options of ``stomp://`` and ``stomp+ssl://``, declared once, and what the URL says.

:class:`Settings` is the one list of options (the docs' options table is rendered from it);
:class:`Endpoint` is what every connection of one backend shares: hosts, login and TLS from the
URL, timeouts from the options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mqkit import adapter
from mqkit.adapter import CONSUMER, PRODUCER, BrokerURL, option
from mqkit.errors import ConfigError

DEFAULT_PORTS = {"stomp": 61613, "stomp+ssl": 61614}


@dataclass(frozen=True)
class Settings(adapter.Settings):
    """Options of ``stomp://`` and ``stomp+ssl://``."""

    connect_timeout: float = option(
        5.0, "Seconds for the TCP connect and the broker's STOMP CONNECTED.", minimum=0.1
    )
    heartbeat: float = option(
        10.0, "STOMP heart-beat interval in seconds, both ways (0 = off).", minimum=0
    )
    reconnect_max_delay: float = option(
        5.0, "Longest pause between reconnection attempts, in seconds.", minimum=0.1
    )
    prefetch: int = option(
        100, "`activemq.prefetchSize` of each subscription.", minimum=1, scopes=[CONSUMER]
    )
    confirm_acks: bool = option(
        True,
        "`ack()` waits for the broker's receipt (false: send the ACK and go on; an ack lost "
        "in a connection drop then means one more delivery).",
        scopes=[CONSUMER],
    )
    ack_timeout: float = option(
        30.0, "Seconds `ack()`/`nack()` wait for the broker's receipt.", minimum=0.1
    )
    max_in_flight: int = option(
        1000,
        "Unconfirmed messages per producer before `send()` blocks.",
        minimum=1,
        scopes=[PRODUCER],
    )
    send_timeout: float = option(
        60.0,
        "Seconds a blocked `send()` waits for room, and `close()` for confirmations.",
        minimum=0.1,
        scopes=[PRODUCER],
    )
    scheduler: bool = option(
        False,
        'The broker runs with `schedulerSupport="true"`: `nack(delay=…)` uses '
        "`AMQ_SCHEDULED_DELAY` and `features.delayed_redelivery` is true.",
    )
    dlq: bool = option(
        False,
        "`nack(requeue=False)` dead-letters through the broker (STOMP NACK) instead of "
        "dropping the message.",
    )
    destination: str | None = option(
        None,
        "Read this existing ActiveMQ destination instead of the topic's group queue: "
        "`/queue/NAME` (the group's members share it with every other reader of the queue) or "
        "`/topic/NAME` (a durable subscription named after the group; one member at a time). "
        "One topic per consumer. See [Existing destinations](#existing-destinations).",
        scopes=[CONSUMER],
    )
    durable: bool = option(
        True,
        "false: subscribe to the topic itself, without a durable queue or subscription: messages "
        "arrive only while the consumer is connected and nothing stays on the broker (the "
        "backend's `throwaway_group_options`, used for request/reply inboxes).",
        scopes=[CONSUMER],
    )
    ca_certs: str | None = option(
        None, "`stomp+ssl://` only: CA bundle to trust (default: the system's)."
    )
    certfile: str | None = option(None, "`stomp+ssl://` only: client certificate (PEM).")
    keyfile: str | None = option(None, "`stomp+ssl://` only: the client certificate's key.")
    verify: bool = option(
        True, "`stomp+ssl://` only: check the server's certificate and host name."
    )


@dataclass(frozen=True)
class Endpoint:
    """What every connection of one backend shares."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    connect_timeout: float
    heartbeat: float
    reconnect_max_delay: float
    #: stomp.py's ``set_ssl`` parameters, or None for plain STOMP.
    ssl: dict[str, Any] | None
    #: The JMS client id sent on CONNECT (a durable topic subscription needs one).
    client_id: str | None = None

    def where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.hosts)


def check_url(url: BrokerURL) -> None:
    """Refuse a URL this adapter cannot use, saying what to write instead."""
    if url.scheme not in DEFAULT_PORTS:
        raise ConfigError(f"{url}: the ActiveMQ adapter speaks stomp:// and stomp+ssl://")
    if not url.hosts:
        raise ConfigError(f"{url}: no host; write e.g. stomp://127.0.0.1:61613")
    if url.path not in ("", "/"):
        raise ConfigError(f"{url}: ActiveMQ has no virtual hosts; remove the path {url.path!r}")


def endpoint(url: BrokerURL, settings: Settings) -> Endpoint:
    """Hosts (default port by scheme), login and TLS (from the scheme and the TLS options)."""
    files = {
        "ca_certs": settings.ca_certs,
        "certfile": settings.certfile,
        "keyfile": settings.keyfile,
    }
    for name, path in files.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"{url}: {name}={path!r} is not a readable file")
    ssl: dict[str, Any] | None = None
    if url.scheme == "stomp+ssl":
        ssl = {
            "ca_certs": settings.ca_certs or None,
            "cert_file": settings.certfile or None,
            "key_file": settings.keyfile or None,
            "verify": settings.verify,
        }
    elif any(files.values()):
        raise ConfigError(f"{url}: TLS options need a stomp+ssl:// URL")
    return Endpoint(
        hosts=tuple((host, port or DEFAULT_PORTS[url.scheme]) for host, port in url.hosts),
        username=url.username,
        password=url.password,
        connect_timeout=settings.connect_timeout,
        heartbeat=settings.heartbeat,
        reconnect_max_delay=settings.reconnect_max_delay,
        ssl=ssl,
    )
