"""What producers and consumers share: settings, connection parameters, names, wire format."""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from mqkit.config import BrokerURL
from mqkit.errors import BrokerUnavailable, ConfigError
from mqkit.message import OutgoingMessage
from mqkit.options import Options

log = logging.getLogger("mqkit_rabbitmq")

#: Keyed messages are routed to one of this many slots (``k.<slot>``); a group's partition
#: queue ``j`` of ``P`` binds every slot ``s`` with ``s % P == j``. Producers therefore never
#: need to know how many partitions a group uses.
SLOTS = 64
#: Routing key of messages without a key; every group's shared queue binds it.
UNKEYED = "u"

#: Headers mqkit adds on the wire and strips on receive.
KEY_HEADER = "x-mqkit-key"
TS_HEADER = "x-mqkit-ts-ms"
#: Headers RabbitMQ adds that are not the sender's.
BROKER_HEADERS = ("x-delivery-count",)
RESERVED_HEADERS = (KEY_HEADER, TS_HEADER, *BROKER_HEADERS)

#: Quorum queues return nacked messages to the *front* of the queue (the order a message was
#: taken in) only when a delivery limit is set; without one they go to the back. Effectively
#: unlimited, so nothing is ever dropped for being redelivered too often.
DELIVERY_LIMIT = 2**31 - 1

#: An exchange collecting membership signals (joins, released partitions) so rebalancing does
#: not wait for the next poll.
CONTROL_EXCHANGE = "mqkit.control"


@dataclass(frozen=True)
class Settings:
    """Everything read from the URL and ``connect(**options)``."""

    url: BrokerURL
    hosts: tuple[tuple[str, int], ...]
    vhost: str
    username: str
    password: str
    tls: ssl.SSLContext | None
    connect_timeout: float
    heartbeat: int
    reconnect_timeout: float
    prefetch: int
    partitions: int
    queue_expires: float
    rebalance_interval: float

    def where(self, index: int = 0) -> str:
        host, port = self.hosts[index % len(self.hosts)]
        return f"RabbitMQ at {host}:{port} (vhost {self.vhost!r})"

    def parameters(self, index: int = 0) -> pika.ConnectionParameters:
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

    def queue_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
        if self.queue_expires > 0:
            args["x-expires"] = int(self.queue_expires * 1000)
        return args


def read_settings(url: BrokerURL, options: Mapping[str, Any]) -> tuple[Settings, Options]:
    """Parse the URL and the backend-wide options; the caller calls ``done()``."""
    tls = url.scheme == "amqps"
    default_port = 5671 if tls else 5672
    if not url.hosts:
        raise ConfigError(
            f"{url}: no host; write e.g. amqp://guest:guest@127.0.0.1:5672/ (vhost after the /)"
        )
    hosts = tuple((host, port or default_port) for host, port in url.hosts)
    path = url.path
    vhost = path[1:] if path.startswith("/") else path
    if not vhost:
        vhost = "/"
    opts = Options(f"{url.scheme}:// options", options)
    context: ssl.SSLContext | None = None
    cafile = opts.str("cafile", "")
    verify = opts.bool("tls_verify", True)
    if tls:
        try:
            context = ssl.create_default_context(cafile=cafile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{url}: cannot load cafile {cafile!r}: {exc}") from None
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    elif cafile:
        raise ConfigError(f"{url}: option cafile needs an amqps:// URL")
    partitions = opts.int("partitions", 4, minimum=1)
    if partitions > SLOTS:
        raise ConfigError(f"{url}: option partitions={partitions} must be at most {SLOTS}")
    settings = Settings(
        url=url,
        hosts=hosts,
        vhost=vhost,
        username=url.username if url.username is not None else "guest",
        password=url.password if url.password is not None else "guest",
        tls=context,
        connect_timeout=opts.float("connect_timeout", 5.0, minimum=0.1),
        heartbeat=opts.int("heartbeat", 30, minimum=0),
        reconnect_timeout=opts.float("reconnect_timeout", 120.0, minimum=0.0),
        prefetch=opts.int("prefetch", 16, minimum=1),
        partitions=partitions,
        queue_expires=opts.float("queue_expires", 0.0),
        rebalance_interval=opts.float("rebalance_interval", 0.25, minimum=0.01),
    )
    return settings, opts


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything pika wrapped inside it (args, ``.exception``, causes)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        item = todo.pop(0)
        if any(item is s for s in seen):
            continue
        seen.append(item)
        inner = getattr(item, "exception", None)
        if isinstance(inner, BaseException):
            todo.append(inner)
        todo.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
        for linked in (item.__cause__, item.__context__):
            if linked is not None:
                todo.append(linked)
    return seen


def describe(exc: BaseException) -> str:
    """A one-line cause for an exception pika raised while connecting or talking."""
    causes = _causes(exc)
    for item in causes:
        if isinstance(item, pika.exceptions.ProbableAuthenticationError):
            return "login refused: check the user name and password (ACCESS_REFUSED)"
        if isinstance(item, pika.exceptions.ProbableAccessDeniedError):
            return (
                "access to the virtual host refused: it does not exist or the user has no "
                "permission on it"
            )
        if isinstance(item, pika.exceptions.IncompatibleProtocolError):
            return "the server did not answer as an AMQP 0-9-1 broker"
        if isinstance(item, pika.exceptions.ConnectionClosedByBroker):
            return f"the broker closed the connection ({item.reply_code} {item.reply_text})"
        if isinstance(item, socket.gaierror):
            return f"the host name does not resolve ({item.strerror})"
        if isinstance(item, ConnectionRefusedError):
            return "connection refused (is the broker running and listening on that port?)"
        if isinstance(item, (TimeoutError, socket.timeout)) or "Timeout" in type(item).__name__:
            return "no answer from the broker within the connect timeout"
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed ({item})"
        if isinstance(item, OSError):
            return f"{type(item).__name__}: {item}"
    for item in causes:
        if isinstance(item, pika.exceptions.StreamLostError):
            return f"connection lost ({item})"
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def unavailable(settings: Settings, index: int, exc: BaseException) -> BrokerUnavailable:
    err = BrokerUnavailable(f"{settings.where(index)} is unavailable: {describe(exc)}")
    err.__cause__ = exc
    return err


def open_blocking(settings: Settings, start: int = 0) -> tuple[pika.BlockingConnection, int]:
    """Connect to the first host that answers; ``BrokerUnavailable`` names the last failure."""
    last: BaseException | None = None
    index = start
    for attempt in range(len(settings.hosts)):
        index = start + attempt
        try:
            return pika.BlockingConnection(settings.parameters(index)), index
        except Exception as exc:  # pika raises non-AMQPError types too (stack timeouts)
            last = exc
    assert last is not None
    raise unavailable(settings, index, last)


# -- names ------------------------------------------------------------------------------------


def check_topic(topic: str) -> None:
    if topic.startswith("amq."):
        raise ConfigError(
            f"topic name {topic!r}: names starting with 'amq.' are reserved by RabbitMQ"
        )


def group_base(topic: str, group: str) -> str:
    """``<topic>:<group>``; ':' never occurs in mqkit names, so bases never collide."""
    base = f"{topic}:{group}"
    if len(base) > 200:  # queue names are at most 255 bytes; names are ASCII
        digest = hashlib.sha1(base.encode()).hexdigest()[:16]
        base = f"{topic[:90]}:{group[:90]}~{digest}"
    return base


def partition_queue(base: str, index: int) -> str:
    return f"{base}:k{index}"


def lock_queue(base: str, index: int) -> str:
    return f"{base}:lock{index}"


def slot_of(key: str) -> int:
    return zlib.crc32(key.encode("utf-8")) % SLOTS


def routing_key(key: str | None) -> str:
    return UNKEYED if key is None else f"k.{slot_of(key)}"


# -- wire format --------------------------------------------------------------------------------


def check_headers(message: OutgoingMessage) -> None:
    """Reject header names the adapter uses itself (before anything is queued)."""
    if message.headers:
        for name in RESERVED_HEADERS:
            if name in message.headers:
                raise ConfigError(f"header {name!r} is reserved by the RabbitMQ adapter")


def properties(message: OutgoingMessage) -> pika.BasicProperties:
    check_headers(message)
    headers: dict[str, Any] = dict(message.headers)
    if message.key is not None:
        headers[KEY_HEADER] = message.key
    headers[TS_HEADER] = int(message.timestamp * 1000)
    return pika.BasicProperties(
        delivery_mode=2,  # persistent
        message_id=message.id,
        timestamp=int(message.timestamp),
        headers=headers,
    )


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def split_headers(
    props: pika.BasicProperties,
) -> tuple[dict[str, str], str | None, float, int]:
    """User headers, key, timestamp and broker delivery count of a received message."""
    raw: dict[str, Any] = dict(props.headers or {})
    key_value = raw.pop(KEY_HEADER, None)
    ts_value = raw.pop(TS_HEADER, None)
    count_value = raw.pop("x-delivery-count", 0)
    headers = {text(k): text(v) for k, v in raw.items()}
    key = None if key_value is None else text(key_value)
    if isinstance(ts_value, int):
        timestamp = ts_value / 1000.0
    elif props.timestamp:
        timestamp = float(props.timestamp)
    else:
        timestamp = time.time()
    try:
        count = int(count_value)
    except (TypeError, ValueError):
        count = 0
    return headers, key, timestamp, count
