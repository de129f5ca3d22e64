"""The envelope on a RocketMQ message, for both drivers; the 5.x client's messages.

The layout is one for ``rocketmq://`` and ``rocketmq+remoting://`` (a message sent through one
reads the same through the other); this module names it and converts the 5.x client's messages.
The 4.x driver's native messages are converted in :mod:`mqkit_rocketmq.remoting.wire`.

* topic and group names: RocketMQ allows ``[%|a-zA-Z0-9_-]`` only, so each ``.`` of an mqkit
  name becomes ``_`` (``orders.created`` is the RocketMQ topic ``orders_created``).
* key → message group (FIFO), RocketMQ's native key. A key RocketMQ cannot take as a message
  group (blank, 64 bytes or more, control characters) travels JSON-encoded in
  :data:`envelope.KEY <mqkit.envelope.KEY>` and a digest of it is the message group, so per-key
  order still holds. (The 4.x driver always sends :data:`~mqkit.envelope.KEY`.)
* headers → user properties as text (:func:`~mqkit.envelope.flatten_headers`
  with ``binary="base64"``: numbers in decimal, booleans ``true``/``false``, bytes in base64),
  their types in :data:`envelope.HEADER_TYPES <mqkit.envelope.HEADER_TYPES>` and their names
  listed in :data:`HEADER_NAMES` so a receiver can tell them from properties the broker adds.
  A header RocketMQ cannot carry as a property of its own (a name it reserves, control
  characters, an empty value — the broker drops empty properties) travels in the JSON object
  :data:`HEADERS` instead; the others stay plain properties.
* content type, content encoding, correlation id, reply-to → user properties of the standard
  names (:data:`envelope.CONTENT_TYPE <mqkit.envelope.CONTENT_TYPE>` …): RocketMQ has no user
  field for them (its ``CORRELATION_ID`` is a system property its own request/reply sets, which
  clients may not write; it is read as the correlation id of a message without ours).
* the mqkit message id → :data:`envelope.ID <mqkit.envelope.ID>` and the message keys (so it
  can be searched by key in RocketMQ's tools). A message without :data:`~mqkit.envelope.ID`
  (another client's) takes its RocketMQ message id; its user properties are its headers.
* the send time → :data:`envelope.TIMESTAMP <mqkit.envelope.TIMESTAMP>` from the 5.x driver,
  whose client sends the born timestamp in whole seconds; the 4.x driver's born timestamp has
  milliseconds and is the send time (a message without the property takes its born time).
* an empty body (RocketMQ refuses those) → one zero byte and :data:`EMPTY` ``=1``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mqkit import envelope
from mqkit.adapter import Delivery, OutgoingMessage
from mqkit.envelope import HeaderValue
from mqkit.errors import ConfigError

#: JSON object of the headers, when some of them cannot be properties of their own.
HEADERS = envelope.PREFIX + "headers"
#: JSON list of the headers' names, when each header is a property of its own.
HEADER_NAMES = envelope.PREFIX + "header-names"
#: ``1``: the body is empty (sent as one zero byte).
EMPTY = envelope.PREFIX + "empty"

#: Every property this adapter writes, none of them a header.
OWN_PROPERTIES = frozenset(
    {
        envelope.ID,
        envelope.KEY,
        envelope.TIMESTAMP,
        envelope.HEADER_TYPES,
        HEADERS,
        HEADER_NAMES,
        EMPTY,
    }
)
#: The standard fields: ``OutgoingMessage``/``Delivery`` attribute → property name.
STANDARD = {
    "content_type": envelope.CONTENT_TYPE,
    "content_encoding": envelope.CONTENT_ENCODING,
    "correlation_id": envelope.CORRELATION_ID,
    "reply_to": envelope.REPLY_TO,
}
#: RocketMQ's own request/reply property, read as the correlation id when ours is absent.
NATIVE_CORRELATION_ID = "CORRELATION_ID"
_STANDARD_NAMES = frozenset(STANDARD.values())

TOPIC_MAX_LENGTH = 127
GROUP_MAX_LENGTH = 120
MESSAGE_GROUP_MAX_BYTES = 63  # the proxy refuses message groups of 64 bytes or more
#: The property a RocketMQ 5 message group travels in (what the 4.x C API can read).
SHARDING_KEY = "__SHARDINGKEY"

#: Property names RocketMQ reserves (``MessageConst.STRING_HASH_SET``) plus those a broker adds
#: to stored messages and hands back among the user properties.
# fmt: off
SYSTEM_PROPERTIES = frozenset({
    "1ST_POP_TIME", "ARRIVE_TIME", "BORN_TIMESTAMP", "BUYER_ID", "CLUSTER", "CONSUME_START_TIME",
    "CORRECTION_FLAG", "CORRELATION_ID", "DELAY", "DLQ_ORIGIN_MESSAGE_ID", "DLQ_ORIGIN_TOPIC",
    "DUP_INFO", "EXTEND_UNIQ_INFO", "INNER_MULTI_QUEUE_OFFSET", "INSTANCE_ID", "KEYS",
    "MAX_OFFSET", "MAX_RECONSUME_TIMES", "MIN_OFFSET", "MQ2_FLAG", "MSG_REGION", "MSG_TYPE",
    "ORIGIN_MESSAGE_ID", "PGROUP", "POP_CK", "POP_CK_OFFSET", "PUSH_REPLY_TIME", "REAL_QID",
    "REAL_TOPIC", "RECONSUME_TIME", "REPLY_TO_CLIENT", "RETRY_TOPIC", "TAGS",
    "TIMER_DELAY_LEVEL", "TIMER_DELAY_MS", "TIMER_DELAY_SEC", "TIMER_DELIVER_MS",
    "TIMER_DEL_UNIQKEY", "TIMER_DEQUEUE_MS", "TIMER_ENQUEUE_MS", "TIMER_OUT_MS",
    "TIMER_ROLL_TIMES", "TRACE_ON", "TRANSFER_FLAG", "TRAN_MSG", "TRAN_PREPARED_QUEUE_OFFSET",
    "TTL", "UNIQ_KEY", "WAIT", "__BORNHOST", "__CRC32#", SHARDING_KEY, "TRACE_CONTEXT",
    "CHECK_IMMUNITY_TIME_IN_SECONDS", "__STARTDELIVERTIME", "SHARDING_KEY",
})
# fmt: on


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _control(text: str) -> bool:
    """Control characters, which RocketMQ refuses in keys, message groups and properties.

    A regular expression: a per-character generator here (run on every message id) was
    mqkit's largest own cost per send.
    """
    return _CONTROL.search(text) is not None


def rocketmq_name(kind: str, name: str) -> str:
    """The RocketMQ topic/group for an mqkit name (already checked portable by the core)."""
    mapped = name.replace(".", "_")
    limit = TOPIC_MAX_LENGTH if kind == "topic" else GROUP_MAX_LENGTH
    if len(mapped) > limit:
        raise ConfigError(
            f"{kind} name {name!r} is too long for RocketMQ: at most {limit} characters"
        )
    return mapped


def message_group_for(key: str) -> tuple[str, str | None]:
    """(message group, value for :data:`~mqkit.envelope.KEY` or None when the key is the
    group itself)."""
    if key.strip() and len(key.encode()) <= MESSAGE_GROUP_MAX_BYTES and not _control(key):
        return key, None
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"mqkit-{digest}", json.dumps(key)


@dataclass(frozen=True, slots=True)
class Encoded:
    body: bytes
    properties: dict[str, str]
    message_group: str | None
    keys: tuple[str, ...]


def _carryable(name: str, value: str) -> bool:
    """Whether RocketMQ keeps ``name=value`` as a user property of its own."""
    return name not in SYSTEM_PROPERTIES and value != "" and not _control(name + value)


def encode(message: OutgoingMessage, *, timestamp: bool) -> Encoded:
    """The body, properties, message group and keys of ``message``; ``timestamp``: write the
    send time as a property (where the client's born timestamp is coarser)."""
    props: dict[str, str] = {envelope.ID: message.id}
    if timestamp:
        props[envelope.TIMESTAMP] = envelope.encode_timestamp(message.timestamp)
    packed: dict[str, str] = {}
    for attr, name in STANDARD.items():
        value = getattr(message, attr)
        if value is not None:
            if _carryable(name, value):
                props[name] = value
            else:
                packed[name] = value
    if message.headers:
        flat, types = envelope.flatten_headers(message.headers, binary="base64")
        names = []
        for name, text in flat.items():
            assert isinstance(text, str)  # base64: bytes travel as text
            if _carryable(name, text):
                props[name] = text
                names.append(name)
            else:
                packed[name] = text
        if names:
            props[HEADER_NAMES] = json.dumps(names)
        if types is not None:
            props[envelope.HEADER_TYPES] = types
    if packed:
        props[HEADERS] = json.dumps(packed)
    group = None
    if message.key is not None:
        group, key_prop = message_group_for(message.key)
        if key_prop is not None:
            props[envelope.KEY] = key_prop
    body = message.body
    if not body:
        body = b"\x00"
        props[EMPTY] = "1"
    keys = (message.id,) if message.id.strip() and not _control(message.id) else ()
    return Encoded(body, props, group, keys)


@dataclass(frozen=True, slots=True)
class Decoded:
    body: bytes
    headers: dict[str, HeaderValue]
    key: str | None
    id: str
    timestamp: float
    content_type: str | None = None
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    #: The properties RocketMQ reserves that the message carries (``KEYS``, ``TAGS``, …).
    system: dict[str, str] = field(default_factory=dict)


def decode(
    body: bytes,
    properties: Mapping[str, str],
    *,
    message_group: str | None,
    message_id: str,
    born_ms: int,
) -> Decoded:
    """What mqkit sees of a RocketMQ message (mqkit's or another client's)."""
    props = properties
    mqkit_id = props.get(envelope.ID)
    loaded = json_property(props, HEADERS)
    packed: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    standard = {
        attr: props.get(name) or _str(packed.pop(name, None)) for attr, name in STANDARD.items()
    }
    text: dict[str, str | bytes]
    names = json_property(props, HEADER_NAMES)
    if isinstance(names, list):
        text = {k: props[k] for k in names if isinstance(k, str) and k in props}
    elif mqkit_id is None and not isinstance(loaded, dict):
        # a message from another RocketMQ client: its user properties are its headers
        text = {
            k: v
            for k, v in props.items()
            if k not in SYSTEM_PROPERTIES and k not in OWN_PROPERTIES and k not in _STANDARD_NAMES
        }
    else:
        text = {}
    for name, value in packed.items():
        text[str(name)] = str(value)
    headers = envelope.restore_headers(text, props.get(envelope.HEADER_TYPES))
    system = {k: v for k, v in props.items() if k in SYSTEM_PROPERTIES}
    if standard["correlation_id"] is None and NATIVE_CORRELATION_ID in props:
        standard["correlation_id"] = props[NATIVE_CORRELATION_ID]
    key: str | None = message_group or None
    if envelope.KEY in props:
        key = _key(props[envelope.KEY])
    if mqkit_id is None:
        mqkit_id = message_id  # the broker's id: the same message read twice keeps it
    timestamp = envelope.decode_timestamp(props.get(envelope.TIMESTAMP), born_ms / 1000.0)
    if props.get(EMPTY) == "1":
        body = b""
    return Decoded(body, headers, key, mqkit_id, timestamp, system=system, **standard)


def json_property(props: Mapping[str, str], name: str) -> Any:
    """Property ``name`` parsed as JSON; ``None`` if absent or not JSON (another producer may
    set any property, and one bad property must not stop a consumer)."""
    raw = props.get(name)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _key(raw: str) -> str | None:
    """The key property mqkit writes: a JSON string, or ``null`` for an unkeyed message;
    anything else (another producer's) is the key as it came."""
    if raw == "null":
        return None
    loaded = json_property({envelope.KEY: raw}, envelope.KEY)
    return loaded if isinstance(loaded, str) else raw


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- the 5.x client's messages --------------------------------------------------------------------


def to_client(message: OutgoingMessage, topic: str, rmsg: Any) -> None:
    """Fill the 5.x client's new ``Message`` ``rmsg`` with ``message`` for RocketMQ ``topic``."""
    encoded = encode(message, timestamp=True)
    rmsg.topic = topic
    rmsg.body = encoded.body
    rmsg.properties.update(encoded.properties)
    if encoded.keys:
        rmsg.keys = encoded.keys[0]
    if encoded.message_group is not None:
        rmsg.message_group = encoded.message_group


def from_client(message: Any, topic: str, attempt: int, handle: Any) -> Delivery:
    """A :class:`Delivery` of the 5.x client's received ``message`` (mqkit ``topic``)."""
    decoded = decode(
        message.body,
        message.properties,
        message_group=message.message_group,
        message_id=message.message_id,
        born_ms=message.born_timestamp or 0,
    )
    return Delivery(
        topic=topic,
        body=decoded.body,
        key=decoded.key,
        headers=decoded.headers,
        id=decoded.id,
        timestamp=decoded.timestamp,
        attempt=attempt,
        handle=handle,
        content_type=decoded.content_type,
        content_encoding=decoded.content_encoding,
        correlation_id=decoded.correlation_id,
        reply_to=decoded.reply_to,
        metadata=client_metadata(message, decoded),
    )


def client_metadata(message: Any, decoded: Decoded) -> dict[str, Any]:
    """:attr:`Delivery.metadata` of a 5.x client message: what the client exposes of it.

    The client does not expose the queue and offset a message was read from.
    """
    return {
        "message_id": message.message_id,
        "topic": message.topic,
        "tag": message.tag,
        "keys": sorted(message.keys),
        "message_group": message.message_group,
        "message_type": _MESSAGE_TYPES.get(message.message_type, str(message.message_type)),
        "born_host": message.born_host,
        "born_timestamp": message.born_timestamp,
        "store_timestamp": getattr(message, "_Message__store_timestamp", None),
        "delivery_timestamp": message.delivery_timestamp,
        "delivery_attempt": message.delivery_attempt,
        "properties": dict(message.properties),
        "system_properties": decoded.system,
    }


#: The 5.x protocol's ``MessageType`` numbers.
_MESSAGE_TYPES = {1: "NORMAL", 2: "FIFO", 3: "DELAY", 4: "TRANSACTION", 5: "LITE", 6: "PRIORITY"}
