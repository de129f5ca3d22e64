"""mqkit on AMQP 0-9-1: the names of exchanges, queues and routing keys, and the envelope
(:mod:`mqkit.envelope`) on a message's properties.

The id and the send time go into the native ``message_id`` and ``timestamp`` properties, so
other AMQP clients read them; ``timestamp`` has whole seconds, so the millisecond time also
travels as the :data:`~mqkit.envelope.TIMESTAMP` header. AMQP has no key field that reaches the
consumer (the routing key carries the key's slot), so the key is the :data:`~mqkit.envelope.KEY`
header. A message from another client decodes as well: without ``message_id`` the id is the
:data:`~mqkit.envelope.ID` header (a bridge may set it) or one derived from what does not change
on redelivery (:func:`foreign_id`); no time gives the receive time.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Mapping
from typing import Any

import pika
import pika.spec

from mqkit.adapter import Delivery, OutgoingMessage, envelope
from mqkit.errors import ConfigError

#: Keyed messages are routed to one of this many slots (``k.<slot>``); a group's partition
#: queue ``j`` of ``P`` binds every slot ``s`` with ``s % P == j``. Producers therefore never
#: need to know how many partitions a group uses.
SLOTS = 64
#: Routing key of messages without a key; every group's shared queue binds it.
UNKEYED = "u"

#: RabbitMQ's own header on quorum-queue redeliveries: it becomes the attempt.
DELIVERY_COUNT = "x-delivery-count"
#: Headers a consumer does not show the application: the envelope's and the broker's count.
_NOT_USER = envelope.TRANSPORT_FIELDS | {DELIVERY_COUNT}

#: Quorum queues return nacked messages to the *front* of the queue (the order a message was
#: taken in) only when a delivery limit is set; without one they go to the back. Effectively
#: unlimited, so nothing is ever dropped for being redelivered too often.
DELIVERY_LIMIT = 2**31 - 1

#: An exchange collecting membership signals (joins, released partitions) so rebalancing does
#: not wait for the next poll.
CONTROL_EXCHANGE = "mqkit.control"


# -- names ------------------------------------------------------------------------------------


def check_topic(topic: str) -> None:
    """Refuse topic names RabbitMQ keeps for itself (``amq.*`` exchanges)."""
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


def queue_arguments(expires: float) -> dict[str, Any]:
    """Arguments of a group's queues: quorum (exact delivery counts, replicated, fsynced),
    nacked messages back to the front, and ``x-expires`` when ``expires`` > 0 seconds."""
    args: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
    if expires > 0:
        args["x-expires"] = int(expires * 1000)
    return args


# -- the envelope on AMQP properties ------------------------------------------------------------


def properties(message: OutgoingMessage) -> pika.BasicProperties:
    """The persistent message's properties: native id and time, headers for the rest."""
    headers: dict[str, Any] = dict(message.headers)
    if message.key is not None:
        headers[envelope.KEY] = message.key
    headers[envelope.TIMESTAMP] = envelope.encode_timestamp(message.timestamp)
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


def decode(topic: str, routing: str, props: pika.spec.BasicProperties, body: bytes) -> Delivery:
    """A received message as a :class:`Delivery` without a handle; ``attempt`` is RabbitMQ's
    delivery count + 1 (the consumer corrects it for returns it made itself)."""
    raw: Mapping[str, Any] = props.headers or {}
    headers = {text(k): text(v) for k, v in raw.items() if k not in _NOT_USER}
    key_value = raw.get(envelope.KEY)
    ts_value = raw.get(envelope.TIMESTAMP)
    count_value = raw.get(DELIVERY_COUNT, 0)
    if ts_value is not None:
        timestamp = envelope.decode_timestamp(ts_value, props.timestamp or time.time())
    elif props.timestamp:
        timestamp = float(props.timestamp)
    else:
        timestamp = time.time()
    try:
        attempt = int(count_value) + 1
    except (TypeError, ValueError):
        attempt = 1
    return Delivery(
        topic=topic,
        body=body,
        key=None if key_value is None else text(key_value),
        headers=headers,
        id=props.message_id
        or text(raw.get(envelope.ID) or "")
        or foreign_id(topic, routing, props, headers, body),
        timestamp=timestamp,
        attempt=attempt,
    )


def foreign_id(
    topic: str,
    routing: str,
    props: pika.spec.BasicProperties,
    headers: dict[str, str],
    body: bytes,
) -> str:
    """An id for a message published without ``message_id`` (not by mqkit): from its exchange,
    routing key, properties, headers and body, which stay the same when RabbitMQ delivers it
    again, so every delivery of it has the same id. Two messages published with all of those
    equal get the same id too: a publisher that sends such duplicates on purpose sets
    ``message_id``."""
    return envelope.transport_id(
        "amqp",
        topic,
        routing,
        props.timestamp,
        props.correlation_id,
        props.app_id,
        props.type,
        props.content_type,
        props.content_encoding,
        props.reply_to,
        props.user_id,
        sorted(headers.items()),
        hashlib.blake2b(body, digest_size=16).hexdigest(),
    )
