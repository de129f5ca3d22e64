"""The options of ``stomp://`` and ``stomp+ssl://``, declared once, and what the URL says.

:class:`Settings` is the one list of options (the docs' options table is rendered from it);
:class:`Endpoint` is what every connection of one backend shares: hosts, login and TLS from the
URL, timeouts from the options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any

from mqkit import adapter
from mqkit.adapter import CONSUMER, PRODUCER, BrokerURL, option
from mqkit.errors import ConfigError
from mqkit.security import TLSOptions, client_context

DEFAULT_PORTS = {"stomp": 61613, "stomp+ssl": 61614}


@dataclass(frozen=True)
class Settings(TLSOptions, adapter.Settings):
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
    #: The TLS context mqkit's options make (stomp.py builds its own from the same files and
    #: switches); used to tell why a handshake failed.
    tls_context: SSLContext | None = field(default=None, repr=False, compare=False)
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
    params: dict[str, Any] | None = None
    context: SSLContext | None = None
    if url.scheme == "stomp+ssl" or settings.tls:
        # Checks the files (ConfigError naming the option) and warns when verification is off.
        context = client_context(settings, str(url))
        params = {
            "ca_certs": settings.ca_file or None,
            "cert_file": settings.cert_file or None,
            "key_file": settings.key_file or None,
            "verify": not settings.tls_insecure_skip_verify,
        }
    elif settings.tls_options_given():
        raise ConfigError(
            f"{url}: the TLS options (ca_file, cert_file, key_file, tls_insecure_skip_verify) "
            "need TLS: a stomp+ssl:// URL or tls=true"
        )
    return Endpoint(
        hosts=tuple((host, port or DEFAULT_PORTS[url.scheme]) for host, port in url.hosts),
        username=url.username,
        password=url.password,
        connect_timeout=settings.connect_timeout,
        heartbeat=settings.heartbeat,
        reconnect_max_delay=settings.reconnect_max_delay,
        ssl=params,
        tls_context=context,
    )
