"""mqkit on AMQP 0-9-1: the names of exchanges, queues and routing keys, and the envelope
(:mod:`mqkit.envelope`) on a message's properties.

Everything AMQP has a property for travels in it, so other AMQP clients read and write the same
messages: ``message_id``, ``timestamp`` (whole seconds, so the millisecond time also travels as
the :data:`~mqkit.envelope.TIMESTAMP` header), ``content_type``, ``content_encoding``,
``correlation_id`` and ``reply_to``. The routing key is the message's key, as a plain publisher
would set it; the key also travels as the :data:`~mqkit.envelope.KEY` header (a routing key has
at most 255 bytes, and an unkeyed message is routed by its id). Headers keep their AMQP types.

A message from another client decodes as well: its routing key is its key; without
``message_id`` the id is the :data:`~mqkit.envelope.ID` header (a bridge may set it) or one
derived from what does not change on redelivery (:func:`foreign_id`); no time gives the
receive time. Header types mqkit's :data:`~mqkit.envelope.HeaderValue` lacks follow one rule
(:func:`header_value`); ``metadata`` keeps them as received.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
import struct
import time
from collections.abc import Mapping
from typing import Any

import pika
import pika.data  # type: ignore[import-untyped]
import pika.spec

from mqkit.adapter import Delivery, OutgoingMessage, envelope
from mqkit.errors import ConfigError

#: Routing key of mqkit's unkeyed messages is their id (so they spread over a group's
#: partitions); a message whose routing key could not hold its key is routed by this prefix
#: and a digest of the key (routing keys have at most 255 bytes).
LONG_KEY_PREFIX = "mqkit-key-sha1."
MAX_ROUTING_KEY = 255

#: The exchange type that hashes routing keys onto a group's partition queues (RabbitMQ's
#: ``rabbitmq_sharding`` plugin, shipped with the broker): the hash of the routing key modulo
#: the number of bound queues, taken in the order of their names, so a key's partition is the
#: same after a broker restart. (The consistent-hash exchange keeps its ring in memory and
#: rebuilds it at restart in the order the bindings are recovered, which moves keys to other
#: partitions and breaks their order while a backlog waits.)
HASH_EXCHANGE_TYPE = "x-modulus-hash"
PLUGIN = "rabbitmq_sharding"
ENABLE_PLUGIN = f"rabbitmq-plugins enable {PLUGIN}"

#: RabbitMQ's own header on quorum-queue redeliveries: it becomes the attempt.
DELIVERY_COUNT = "x-delivery-count"
#: Headers a consumer does not show the application: the envelope's and the broker's count.
_NOT_USER = envelope.TRANSPORT_FIELDS | {DELIVERY_COUNT}

#: Quorum queues return nacked messages to the *front* of the queue (the order a message was
#: taken in) only when a delivery limit is set; without one they go to the back. Effectively
#: unlimited, so nothing is ever dropped for being redelivered too often.
DELIVERY_LIMIT = 2**31 - 1
#: The same limit, one less, on the one queue of a ``partitions=0`` group: RabbitMQ refuses to
#: declare a queue again with another limit, so a member that uses the other mode is refused
#: (``ONE_QUEUE_REFUSAL`` names the argument in the refusal) instead of binding a second copy
#: of the group's messages.
ONE_QUEUE_DELIVERY_LIMIT = DELIVERY_LIMIT - 1
ONE_QUEUE_REFUSAL = "x-delivery-limit"

#: An exchange collecting membership signals (joins, released partitions) so rebalancing does
#: not wait for the next poll.
CONTROL_EXCHANGE = "mqkit.control"


# -- pika and AMQP doubles ----------------------------------------------------------------------


def _fix_pika_doubles() -> None:
    """Let pika encode ``float`` header values as AMQP doubles (``d``) and decode ``d``/``f``
    as ``float``: pika releases before the upstream fix refuse to encode floats and truncate
    received ones to ``int``. Nothing that worked before changes; a fixed pika is left alone."""
    probe = b"d" + struct.pack(">d", 0.5)
    if pika.data.decode_value(probe, 0)[0] == 0.5:
        try:
            pika.data.encode_value([], 0.5)
            return
        except Exception:  # decodes but cannot encode: add encoding below
            pass
    encode_value = pika.data.encode_value
    decode_value = pika.data.decode_value

    def encode(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, float):
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return int(encode_value(pieces, value))

    def decode(encoded: bytes, offset: int) -> tuple[Any, int]:
        kind = encoded[offset : offset + 1]
        if kind == b"d":
            return struct.unpack_from(">d", encoded, offset + 1)[0], offset + 9
        if kind == b"f":
            return struct.unpack_from(">f", encoded, offset + 1)[0], offset + 5
        decoded, end = decode_value(encoded, offset)
        return decoded, int(end)

    pika.data.encode_value = encode
    pika.data.decode_value = decode


_fix_pika_doubles()


# -- names ------------------------------------------------------------------------------------


def is_queue_address(topic: str) -> bool:
    """``amq.*`` names are RabbitMQ's own: as a destination (a plain RPC client's ``reply_to``:
    ``amq.gen-…``, ``amq.rabbitmq.reply-to``) they name a queue, reached through the default
    exchange with the name as routing key."""
    return topic.startswith("amq.")


def check_topic(topic: str) -> None:
    """Refuse topic names RabbitMQ keeps for itself (``amq.*`` exchanges) for consuming."""
    if is_queue_address(topic):
        raise ConfigError(
            f"topic name {topic!r}: names starting with 'amq.' are reserved by RabbitMQ "
            "(to consume an existing queue, give its name as the consumer option queue=)"
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


def hash_exchange(base: str) -> str:
    """The group's hash exchange, bound to the topic's exchange."""
    return f"{base}:hash"


def routing_key(key: str | None, message_id: str) -> str:
    """The key itself (what a plain consumer binds by); the id for unkeyed messages."""
    if key is None:
        return message_id
    if len(key.encode("utf-8")) > MAX_ROUTING_KEY:
        return LONG_KEY_PREFIX + hashlib.sha1(key.encode("utf-8")).hexdigest()
    return key


def queue_arguments(expires: float, *, one_queue: bool = False) -> dict[str, Any]:
    """Arguments of a group's queues: quorum (exact delivery counts, replicated, fsynced),
    nacked messages back to the front, and ``x-expires`` when ``expires`` > 0 seconds."""
    limit = ONE_QUEUE_DELIVERY_LIMIT if one_queue else DELIVERY_LIMIT
    args: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": limit}
    if expires > 0:
        args["x-expires"] = int(expires * 1000)
    return args


# -- the envelope on AMQP properties ------------------------------------------------------------


def properties(message: OutgoingMessage) -> pika.BasicProperties:
    """The persistent message's properties: native fields, headers for the rest."""
    headers: dict[str, Any] = dict(message.headers)
    if message.key is not None:
        headers[envelope.KEY] = message.key
    millis = envelope.encode_timestamp(message.timestamp)
    headers[envelope.TIMESTAMP] = millis
    return pika.BasicProperties(
        delivery_mode=2,  # persistent
        message_id=message.id,
        # the whole seconds of the same (rounded) milliseconds: the two fields always agree
        timestamp=int(millis) // 1000,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        headers=headers,
    )


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def header_value(value: Any) -> envelope.HeaderValue:
    """A received header value as mqkit's :data:`~mqkit.envelope.HeaderValue`.

    ``str``, ``bytes``, ``int``, ``float`` and ``bool`` stay as they are. The one rule for the
    other AMQP types: a decimal becomes its exact decimal text (``"12.50"``), a timestamp its
    ISO 8601 text in UTC, a void value ``""``, and a nested table or array JSON text (inside
    it, the same rule; bytes as text when they are UTF-8, else base64). The value as received
    stays in ``Message.metadata["headers"]``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # pika decodes 64-bit integers as its own int subclass
    if isinstance(value, str | bytes | float):
        return value
    if value is None:
        return ""
    if isinstance(value, decimal.Decimal | datetime.datetime):
        return str(_plain(value))
    return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    """``value`` with what JSON lacks turned into text (see :func:`header_value`)."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def decode(
    topic: str, method: pika.spec.Basic.Deliver, props: pika.spec.BasicProperties, body: bytes
) -> Delivery:
    """A received message as a :class:`Delivery` without a handle; ``attempt`` is RabbitMQ's
    delivery count + 1 (the consumer corrects it for returns it made itself), or 2 for a
    redelivered message of a queue that does not count (a classic queue)."""
    raw: Mapping[str, Any] = props.headers or {}
    routing = method.routing_key or ""
    exchange = method.exchange or ""
    headers = {text(k): header_value(v) for k, v in raw.items() if k not in _NOT_USER}
    key_value = raw.get(envelope.KEY)
    ts_value = raw.get(envelope.TIMESTAMP)
    count_value = raw.get(DELIVERY_COUNT)
    if key_value is not None:
        key: str | None = text(key_value)
    elif ts_value is None and exchange and routing:
        key = routing  # another client's message: its routing key is its key
    else:
        key = None  # mqkit's unkeyed message, or one sent straight to a queue
    if ts_value is not None:
        timestamp = envelope.decode_timestamp(ts_value, float(props.timestamp or time.time()))
    elif props.timestamp:
        timestamp = float(props.timestamp)
    else:
        timestamp = time.time()
    if count_value is not None:
        try:  # another client's count may be any AMQP value: a negative one counts as none
            attempt = max(0, int(count_value)) + 1
        except (TypeError, ValueError, OverflowError):  # e.g. a table, NaN, Infinity
            attempt = 1
    else:
        attempt = 2 if method.redelivered else 1
    return Delivery(
        topic=topic,
        body=body,
        key=key,
        headers=headers,
        id=props.message_id
        or text(raw.get(envelope.ID) or "")
        or foreign_id(exchange or topic, routing, props, headers, body),
        timestamp=timestamp,
        attempt=attempt,
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        metadata=metadata(method, props),
    )


def metadata(method: pika.spec.Basic.Deliver, props: pika.spec.BasicProperties) -> dict[str, Any]:
    """What RabbitMQ delivered, as received: the delivery's exchange, routing key and
    redelivered flag, every basic property and the raw headers table."""
    return {
        "exchange": method.exchange,
        "routing_key": method.routing_key,
        "redelivered": bool(method.redelivered),
        "delivery_tag": method.delivery_tag,
        "consumer_tag": method.consumer_tag,
        "message_id": props.message_id,
        "timestamp": props.timestamp,
        "content_type": props.content_type,
        "content_encoding": props.content_encoding,
        "correlation_id": props.correlation_id,
        "reply_to": props.reply_to,
        "expiration": props.expiration,
        "priority": props.priority,
        "delivery_mode": props.delivery_mode,
        "type": props.type,
        "user_id": props.user_id,
        "app_id": props.app_id,
        "cluster_id": props.cluster_id,
        "headers": dict(props.headers or {}),
    }


def foreign_id(
    topic: str,
    routing: str,
    props: pika.spec.BasicProperties,
    headers: Mapping[str, Any],
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
        sorted((k, repr(v)) for k, v in headers.items()),
        hashlib.blake2b(body, digest_size=16).hexdigest(),
    )
