"""The envelope on librocketmq's native messages: the layout of :mod:`mqkit_rocketmq.wire`, with
what the C API allows.

* key: always :data:`envelope.KEY <mqkit.envelope.KEY>` (JSON), since the C API sets no message
  group; the producer sends a keyed message to the queue its key hashes to. A received message
  without it takes its RocketMQ 5 message group (``__SHARDINGKEY``) as key.
* send time: the native born timestamp (milliseconds, set by librocketmq when it sends), so no
  :data:`envelope.TIMESTAMP <mqkit.envelope.TIMESTAMP>` is written; one that is present (from
  the 5.x driver) is read.
* headers: the C API cannot list a message's properties, so a message from another client
  arrives with no headers, and its RocketMQ message id as id; its standard fields (content
  type, correlation id…) are read by name.
"""

from __future__ import annotations

import json

from mqkit import envelope
from mqkit.adapter import Delivery, OutgoingMessage
from mqkit_rocketmq import wire
from mqkit_rocketmq.remoting._native import NativeError, body, check, lib, text
from mqkit_rocketmq.wire import (
    EMPTY,
    HEADER_NAMES,
    HEADERS,
    NATIVE_CORRELATION_ID,
    SHARDING_KEY,
    STANDARD,
    Encoded,
)

#: The properties read from every received message besides the headers listed in HEADER_NAMES.
_READ = (
    envelope.ID,
    envelope.TIMESTAMP,
    envelope.KEY,
    envelope.HEADER_TYPES,
    HEADERS,
    HEADER_NAMES,
    EMPTY,
    SHARDING_KEY,
    NATIVE_CORRELATION_ID,
    *STANDARD.values(),
)


def encode(message: OutgoingMessage) -> Encoded:
    """``message`` laid out for RocketMQ; turned into a native message by :func:`to_native`."""
    encoded = wire.encode(message, timestamp=False)
    if message.key is not None and envelope.KEY not in encoded.properties:
        encoded.properties[envelope.KEY] = json.dumps(message.key)
    return encoded


def to_native(topic: str, encoded: Encoded) -> int:
    """A new native message (the caller destroys it with ``DestroyMessage``)."""
    native: int = lib.CreateMessage(topic.encode())
    try:
        check(lib.SetByteMessageBody(native, encoded.body, len(encoded.body)), "body")
        if encoded.keys:
            check(lib.SetMessageKeys(native, encoded.keys[0].encode()), "keys")
        for name, value in encoded.properties.items():
            check(
                lib.SetMessageProperty(native, name.encode(), value.encode()),
                f"property {name!r}",
            )
    except NativeError:
        lib.DestroyMessage(native)
        raise
    return native


def from_native(message: int, names: dict[str, str]) -> Delivery:
    """A :class:`Delivery` of a received native message (``names``: RocketMQ topic → mqkit
    topic), with RocketMQ's delivery count as attempt and no handle yet."""

    def prop(name: str) -> str | None:
        value = lib.GetMessageProperty(message, name.encode())
        return None if value is None else value.decode("utf-8", "replace")

    props: dict[str, str] = {}
    for name in _READ:
        value = prop(name)
        if value:
            props[name] = value
    if HEADER_NAMES in props:
        listed = wire.json_property(props, HEADER_NAMES)
        for name in listed if isinstance(listed, list) else ():
            value = prop(name) if isinstance(name, str) else None
            if value:
                props[name] = value
    elif envelope.ID not in props:  # another client's message: its properties cannot be listed
        props[HEADER_NAMES] = "[]"
    topic = text(lib.GetMessageTopic(message))
    message_id = text(lib.GetMessageId(message))
    born_ms = int(lib.GetMessageBornTimestamp(message))
    decoded = wire.decode(
        body(message),
        props,
        message_group=props.get(SHARDING_KEY),
        message_id=message_id,
        born_ms=born_ms,
    )
    keys = text(lib.GetMessageKeys(message))
    metadata = {
        "message_id": message_id,
        "topic": topic,
        "tag": text(lib.GetMessageTags(message)) or None,
        "keys": sorted(set(keys.split())),
        "message_group": props.get(SHARDING_KEY),
        "queue_id": int(lib.GetMessageQueueId(message)),
        "queue_offset": int(lib.GetMessageQueueOffset(message)),
        "born_timestamp": born_ms,
        "store_timestamp": int(lib.GetMessageStoreTimestamp(message)),
        "reconsume_times": int(lib.GetMessageReconsumeTimes(message)),
        "system_properties": decoded.system,
    }
    return Delivery(
        topic=names.get(topic, topic),
        body=decoded.body,
        key=decoded.key,
        headers=decoded.headers,
        id=decoded.id,
        timestamp=decoded.timestamp,
        attempt=int(lib.GetMessageReconsumeTimes(message)) + 1,
        handle=None,
        content_type=decoded.content_type,
        content_encoding=decoded.content_encoding,
        correlation_id=decoded.correlation_id,
        reply_to=decoded.reply_to,
        metadata=metadata,
    )
