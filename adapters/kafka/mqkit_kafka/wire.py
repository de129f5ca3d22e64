"""The envelope on a Kafka record: key and timestamp are the record's own, the rest headers.

Kafka has a native key (bytes: the key as UTF-8) and timestamp (milliseconds) and nothing else,
so the standard fields travel as record headers of their standard names (``content-type``,
``content-encoding``, ``correlation-id``, ``reply-to``: UTF-8 text, as other clients write
them), next to the user's headers and mqkit's id (:data:`~mqkit.envelope.ID`). Header values
are bytes on Kafka: text as UTF-8, bytes as they are, numbers and booleans as text, with their
types in :data:`~mqkit.envelope.HEADER_TYPES` (the core's one rule, ``binary="raw"``).

Records from producers that are not mqkit are normal input. The rule for names under mqkit's
prefix: ``mqkit-id`` is the message id only when it is well formed (32 lowercase hex digits,
what mqkit writes), ``mqkit-types`` is the type map only when it is one (a JSON object of known
types); anything else, whatever its name, is a user header, so nothing is dropped silently. A
record without an id gets one from its place in the log (topic, partition, offset), so every
read of it gets the same id. A value that is not UTF-8 stays ``bytes``; a null value is ``""``.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from mqkit.adapter import Delivery, OutgoingMessage, envelope

ID = envelope.ID
TYPES = envelope.HEADER_TYPES
CONTENT_TYPE = envelope.CONTENT_TYPE
CONTENT_ENCODING = envelope.CONTENT_ENCODING
CORRELATION_ID = envelope.CORRELATION_ID
REPLY_TO = envelope.REPLY_TO

RecordHeaders = list[tuple[str, bytes]]

_ID_FORM = re.compile(rb"[0-9a-f]{32}")
_KINDS = frozenset({"int", "float", "bool", "bytes"})
# The standard fields, matched without regard to case on receipt (``Content-Type`` from an
# HTTP-minded producer is the content type too; the core refuses these names as user headers).
_STANDARD = {CONTENT_TYPE: 0, CONTENT_ENCODING: 1, CORRELATION_ID: 2, REPLY_TO: 3}
_NO_FIELDS: list[str | None] = [None, None, None, None]
# Encoded values of the usual content types, made once.
_encoded: dict[str, bytes] = {}


def _utf8(text: str) -> bytes:
    value = _encoded.get(text)
    if value is None:
        value = text.encode("utf-8")
        if len(_encoded) < 64:
            _encoded[text] = value
    return value


def encode(message: OutgoingMessage) -> tuple[bytes | None, RecordHeaders, int]:
    """The record key, headers and timestamp (ms) of ``message``.

    Headers: the user's (the core refused reserved and standard names already), the standard
    fields that are set, the header types if any value is not ``str``, then the id.
    """
    key, headers = message.key, message.headers
    out: RecordHeaders = []
    if headers:
        flat, types = envelope.flatten_headers(headers, binary="raw")
        out = [(k, v.encode("utf-8") if isinstance(v, str) else v) for k, v in flat.items()]
    else:
        types = None
    if message.content_type is not None:
        out.append((CONTENT_TYPE, _utf8(message.content_type)))
    if message.content_encoding is not None:
        out.append((CONTENT_ENCODING, _utf8(message.content_encoding)))
    if message.correlation_id is not None:
        out.append((CORRELATION_ID, message.correlation_id.encode("utf-8")))
    if message.reply_to is not None:
        out.append((REPLY_TO, message.reply_to.encode("utf-8")))
    if types is not None:
        out.append((TYPES, types.encode("utf-8")))
    out.append((ID, message.id.encode("ascii")))
    return (
        # surrogateescape: the inverse of decode(), so another producer's key that is not
        # UTF-8 goes out byte for byte when its message is retried or dead-lettered
        None if key is None else key.encode("utf-8", "surrogateescape"),
        out,
        int(message.timestamp * 1000),
    )


def is_mqkit_id(value: bytes | None) -> bool:
    """Whether ``value`` is an id as mqkit writes it: 32 lowercase hex digits."""
    return value is not None and _ID_FORM.fullmatch(value) is not None


def _type_map(value: bytes | None) -> str | None:
    """``value`` as the ``mqkit-types`` JSON text if it is a type map, else ``None``."""
    if value is None:
        return None
    try:
        text = value.decode("utf-8")
        loaded = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return None
    if not isinstance(loaded, dict) or not all(
        isinstance(kind, str) and kind in _KINDS for kind in loaded.values()
    ):
        return None
    return text


def decode_headers(
    raw: Any,
) -> tuple[dict[str, envelope.HeaderValue], str | None, list[str | None]]:
    """The user's headers, mqkit's id (``None`` if absent) and the standard fields (content
    type, content encoding, correlation id, reply-to; ``None`` where absent) of a record.

    A name that occurs more than once counts with its last value (as Java's
    ``Headers.lastHeader``); the raw list is in the delivery's metadata.
    """
    text: dict[str, str | bytes] = {}
    message_id: str | None = None
    types: str | None = None
    fields: list[str | None] = [None, None, None, None]
    for name, value in raw:
        if name == ID and value is not None and _ID_FORM.fullmatch(value) is not None:
            message_id = value.decode("ascii")
            continue
        if name == TYPES:
            types = _type_map(value)
            if types is not None:
                continue
        index = _STANDARD.get(name)
        if index is None and name[:1] in "CcRr":  # only these can be a standard name
            index = _STANDARD.get(name.lower())
        if index is not None:
            fields[index] = None if value is None else value.decode("utf-8", errors="replace")
            continue
        text[name] = b"" if value is None else value
    headers = envelope.restore_headers(text, types) if text else {}
    return headers, message_id, fields


def metadata(partition: int, record: Any) -> dict[str, Any]:
    """What the record says that mqkit does not map (``Message.metadata``)."""
    return {
        "partition": partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp,
        "timestamp_type": record.timestamp_type,
        "leader_epoch": record.leader_epoch,
        "headers": record.headers or [],  # a list of its own per record (kafka-python)
        "serialized_key_size": record.serialized_key_size,
        "serialized_value_size": record.serialized_value_size,
        "serialized_header_size": record.serialized_header_size,
    }


def decode(topic: str, partition: int, record: Any, attempt: int, handle: Any) -> Delivery:
    """A kafka-python ``ConsumerRecord`` as a :class:`Delivery`; ``handle`` settles it."""
    return delivery(
        topic,
        partition,
        record.offset,
        record.key,
        record.value,
        record.headers,
        record.timestamp,
        attempt,
        handle,
        metadata(partition, record),
    )


def decode_confluent(
    topic: str, partition: int, record: Any, attempt: int, handle: Any
) -> Delivery:
    """A confluent-kafka ``Message`` as a :class:`Delivery`; ``handle`` settles it."""
    offset, raw_headers = record.offset(), record.headers()
    stamp_type, stamp = record.timestamp()
    return delivery(
        topic,
        partition,
        offset,
        record.key(),
        record.value(),
        raw_headers,
        stamp,
        attempt,
        handle,
        {
            "partition": partition,
            "offset": offset,
            "timestamp_ms": stamp,
            "timestamp_type": stamp_type - 1,  # librdkafka counts from 1 (0: not available)
            "leader_epoch": record.leader_epoch(),
            "headers": raw_headers or [],
        },
    )


def delivery(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    raw_headers: RecordHeaders | None,
    stamp: int,
    attempt: int,
    handle: Any,
    meta: dict[str, Any],
) -> Delivery:
    """A record's parts as a :class:`Delivery` (whichever client fetched it)."""
    if raw_headers:
        headers, message_id, fields = decode_headers(raw_headers)
    else:
        headers, message_id, fields = {}, None, _NO_FIELDS
    content_type, content_encoding, correlation_id, reply_to = fields
    return Delivery(
        topic=topic,
        body=b"" if value is None else value,  # bytes: the client decodes nothing
        key=None if key is None else key.decode("utf-8", errors="surrogateescape"),
        headers=headers,
        id=message_id or envelope.transport_id(topic, partition, offset),
        timestamp=stamp / 1000.0 if stamp >= 0 else time.time(),
        attempt=attempt,
        handle=handle,
        content_type=content_type,
        content_encoding=content_encoding,
        correlation_id=correlation_id,
        reply_to=reply_to,
        metadata=meta,
    )
