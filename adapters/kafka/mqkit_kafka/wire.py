"""The envelope on a Kafka record: key and timestamp are the record's own, the id a header.

Kafka has a native key (bytes: the key as UTF-8) and timestamp (milliseconds), so only
:data:`~mqkit.envelope.ID` travels as a record header, next to the user's headers (values as
UTF-8). A record from a producer that is not mqkit has no id header: its id is derived from
where it sits in the log (topic, partition, offset), so every read of it gets the same id.
"""

from __future__ import annotations

import time
from typing import Any

from mqkit.adapter import Delivery, OutgoingMessage, envelope

ID = envelope.ID
_TRANSPORT_FIELDS = envelope.TRANSPORT_FIELDS

RecordHeaders = list[tuple[str, bytes]]


def encode(message: OutgoingMessage) -> tuple[bytes | None, RecordHeaders, int]:
    """The record key, headers and timestamp (ms) of ``message``.

    Headers are the user's (the core refused reserved names already), then the id.
    """
    key, headers = message.key, message.headers
    out = [(k, v.encode("utf-8")) for k, v in headers.items()] if headers else []
    out.append((ID, message.id.encode("ascii")))
    return (
        None if key is None else key.encode("utf-8"),
        out,
        int(message.timestamp * 1000),
    )


def decode_headers(raw: Any) -> tuple[dict[str, str], str | None]:
    """The user's headers and mqkit's id (``None`` if absent) from a record's headers."""
    if len(raw) == 1 and raw[0][0] == ID and raw[0][1] is not None:
        return {}, raw[0][1].decode("utf-8", errors="replace")  # mqkit's own: the usual case
    headers: dict[str, str] = {}
    message_id = None
    for name, value in raw:
        if name in _TRANSPORT_FIELDS:  # mqkit's id, or a field another mqkit adapter wrote
            if name == ID and value is not None:
                message_id = value.decode("utf-8", errors="replace")
            continue
        headers[name] = "" if value is None else value.decode("utf-8", errors="replace")
    return headers, message_id


def decode(topic: str, partition: int, record: Any, attempt: int, handle: Any) -> Delivery:
    """A kafka-python ``ConsumerRecord`` as a :class:`Delivery`; ``handle`` settles it."""
    raw_headers, key, value, stamp = record.headers, record.key, record.value, record.timestamp
    if raw_headers:
        headers, message_id = decode_headers(raw_headers)
    else:
        headers, message_id = {}, None
    return Delivery(
        topic=topic,
        body=b"" if value is None else value,  # bytes: the adapter sets no deserializer
        key=None if key is None else key.decode("utf-8", errors="surrogateescape"),
        headers=headers,
        id=message_id or envelope.transport_id(topic, partition, record.offset),
        timestamp=stamp / 1000.0 if stamp >= 0 else time.time(),
        attempt=attempt,
        handle=handle,
    )
