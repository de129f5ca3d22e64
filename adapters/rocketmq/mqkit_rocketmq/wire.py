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
* headers → user properties, unchanged, with their names listed in :data:`HEADER_NAMES` so a
  receiver can tell them from properties the broker adds. Headers RocketMQ cannot carry as
  properties (names it reserves, control characters, empty values — the broker drops empty
  properties) are sent together as JSON in :data:`HEADERS` instead.
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
from dataclasses import dataclass
from typing import Any

from mqkit import envelope
from mqkit.adapter import Delivery, OutgoingMessage
from mqkit.errors import ConfigError

#: JSON object of the headers, when some of them cannot be properties of their own.
HEADERS = envelope.PREFIX + "headers"
#: JSON list of the headers' names, when each header is a property of its own.
HEADER_NAMES = envelope.PREFIX + "header-names"
#: ``1``: the body is empty (sent as one zero byte).
EMPTY = envelope.PREFIX + "empty"

#: Every property this adapter writes, none of them a header.
OWN_PROPERTIES = frozenset(
    {envelope.ID, envelope.KEY, envelope.TIMESTAMP, HEADERS, HEADER_NAMES, EMPTY}
)

TOPIC_MAX_LENGTH = 127
GROUP_MAX_LENGTH = 120
MESSAGE_GROUP_MAX_BYTES = 63  # the proxy refuses message groups of 64 bytes or more
#: The property a RocketMQ 5 message group travels in (what the 4.x C API can read).
SHARDING_KEY = "__SHARDINGKEY"

#: Property names RocketMQ reserves (``MessageConst.STRING_HASH_SET``) plus those a broker adds
#: to stored messages and hands back among the user properties.
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


def encode(message: OutgoingMessage, *, timestamp: bool) -> Encoded:
    """The body, properties, message group and keys of ``message``; ``timestamp``: write the
    send time as a property (where the client's born timestamp is coarser)."""
    props: dict[str, str] = {envelope.ID: message.id}
    if timestamp:
        props[envelope.TIMESTAMP] = envelope.encode_timestamp(message.timestamp)
    headers = message.headers
    if headers:
        plain = all(
            k not in SYSTEM_PROPERTIES and v != "" and not _control(k) and not _control(v)
            for k, v in headers.items()
        )
        if plain:
            props.update(headers)
            props[HEADER_NAMES] = json.dumps(list(headers))
        else:
            props[HEADERS] = json.dumps(dict(headers))
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
    headers: dict[str, str]
    key: str | None
    id: str
    timestamp: float


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
    if HEADERS in props:
        headers = {str(k): str(v) for k, v in json.loads(props[HEADERS]).items()}
    elif HEADER_NAMES in props:
        headers = {k: props[k] for k in json.loads(props[HEADER_NAMES]) if k in props}
    elif mqkit_id is not None:
        headers = {}
    else:  # a message from another RocketMQ client: its user properties are its headers
        headers = {
            k: v
            for k, v in props.items()
            if k not in SYSTEM_PROPERTIES and k not in OWN_PROPERTIES
        }
    if envelope.KEY in props:
        key: str | None = json.loads(props[envelope.KEY])
    else:
        key = message_group or None
    if mqkit_id is None:
        mqkit_id = message_id  # the broker's id: the same message read twice keeps it
    timestamp = envelope.decode_timestamp(props.get(envelope.TIMESTAMP), born_ms / 1000.0)
    if props.get(EMPTY) == "1":
        body = b""
    return Decoded(body, headers, key, mqkit_id, timestamp)


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
    )
