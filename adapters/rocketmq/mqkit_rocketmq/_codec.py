"""How an mqkit message is laid out on a RocketMQ message, shared by both drivers.

* topic and group names: RocketMQ allows ``[%|a-zA-Z0-9_-]`` only, so each ``.`` of an mqkit
  name becomes ``_`` (``orders.created`` is the RocketMQ topic ``orders_created``).
* key → message group (FIFO). A key RocketMQ cannot take as a message group (blank, 64 bytes or
  more, control characters) travels in the property ``mqkit.key`` and a digest of it is the
  message group, so per-key order still holds.
* headers → user properties, unchanged, with their names listed in ``mqkit.hk`` so a receiver
  can tell them from properties the broker adds. Headers RocketMQ cannot carry as properties
  (names it reserves, names starting with ``mqkit.``, control characters, empty values — the
  broker drops empty properties) are sent together as JSON in ``mqkit.headers`` instead.
* the mqkit message id → ``mqkit.id`` and the message keys (so it can be searched by key in
  RocketMQ's tools); the RocketMQ message id is the client's own.
* the send time → ``mqkit.ts`` (RocketMQ's born timestamp has only millisecond precision, and
  the 5.x client sends whole seconds).
* an empty body (RocketMQ refuses those) → one zero byte and ``mqkit.empty=1``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mqkit.errors import ConfigError
from mqkit.message import OutgoingMessage

PREFIX = "mqkit."
PROP_ID = "mqkit.id"
PROP_TS = "mqkit.ts"
PROP_KEY = "mqkit.key"
PROP_HEADERS = "mqkit.headers"
PROP_HEADER_NAMES = "mqkit.hk"
PROP_EMPTY = "mqkit.empty"

TOPIC_MAX_LENGTH = 127
GROUP_MAX_LENGTH = 120
MESSAGE_GROUP_MAX_BYTES = 63  # the proxy refuses message groups of 64 bytes or more

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
    "TTL", "UNIQ_KEY", "WAIT", "__BORNHOST", "__CRC32#", "__SHARDINGKEY", "TRACE_CONTEXT",
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
    """(message group, value for ``mqkit.key`` or None when the key is the group itself)."""
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


def encode(message: OutgoingMessage) -> Encoded:
    props: dict[str, str] = {PROP_ID: message.id, PROP_TS: repr(message.timestamp)}
    headers = dict(message.headers)
    if headers:
        plain = all(
            k not in SYSTEM_PROPERTIES
            and not k.startswith(PREFIX)
            and v != ""
            and not _control(k)
            and not _control(v)
            for k, v in headers.items()
        )
        if plain:
            props.update(headers)
            props[PROP_HEADER_NAMES] = json.dumps(list(headers))
        else:
            props[PROP_HEADERS] = json.dumps(headers)
    group = None
    if message.key is not None:
        group, key_prop = message_group_for(message.key)
        if key_prop is not None:
            props[PROP_KEY] = key_prop
    body = message.body
    if not body:
        body = b"\x00"
        props[PROP_EMPTY] = "1"
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
    keys: list[str] | tuple[str, ...],
    message_id: str,
    born_ms: int,
) -> Decoded:
    props = dict(properties)
    mqkit_id = props.get(PROP_ID)
    if PROP_HEADERS in props:
        headers = {str(k): str(v) for k, v in json.loads(props[PROP_HEADERS]).items()}
    elif PROP_HEADER_NAMES in props:
        headers = {k: props[k] for k in json.loads(props[PROP_HEADER_NAMES]) if k in props}
    elif mqkit_id is not None:
        headers = {}
    else:  # a message from another RocketMQ client: its user properties are its headers
        headers = {
            k: v for k, v in props.items()
            if k not in SYSTEM_PROPERTIES and not k.startswith(PREFIX)
        }
    if PROP_KEY in props:
        key: str | None = json.loads(props[PROP_KEY])
    else:
        key = message_group or None
    if mqkit_id is None:
        mqkit_id = keys[0] if keys else message_id
    try:
        timestamp = float(props[PROP_TS])
    except (KeyError, ValueError):
        timestamp = born_ms / 1000.0
    if props.get(PROP_EMPTY) == "1":
        body = b""
    return Decoded(body, headers, key, mqkit_id, timestamp)
