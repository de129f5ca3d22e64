"""What every outbox shares: the encoded row, the write, and the relay's side of a table.

A row holds the message as it will be published — topic, key, the serializer's body bytes, the
standard fields, the headers — and its **message id**, fixed when the row is written. Every
publication of the row, the first or a repeat after a crash, carries that id, so the consumers'
idempotency helper turns the relay's at-least-once into one effect.

The relay's side (:class:`OutboxTable`) claims rows with a *lease*: a token and a deadline. A
claim takes the oldest unsent rows whose key no live lease holds, in id order, so one key's rows
are published by one relay at a time and a row never before an earlier row of its key. A relay
that dies leaves its lease to expire; the next claim takes the rows again (same ids).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack

from mqkit import envelope
from mqkit.client import check_name
from mqkit.envelope import HeaderValue
from mqkit.message import new_message_id
from mqkit.serialization import Serializer, content_type_of, get_serializer

#: The default table; a relay publishes one table.
DEFAULT_TABLE = "mqkit_outbox"
#: The lease token and deadline of a parked row: a row the producer refuses outright.
PARKED = "parked"
PARKED_UNTIL = 9.0e15


def check_table(table: str) -> str:
    if not table or not table.replace("_", "").isalnum() or table[0].isdigit():
        raise ValueError(f"table name {table!r} must be letters, digits and _")
    return table


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message waiting in an outbox table, as the relay publishes it."""

    id: int
    message_id: str
    topic: str
    key: str | None
    body: bytes
    headers: Mapping[str, HeaderValue]
    content_type: str | None
    content_encoding: str | None
    correlation_id: str | None
    reply_to: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Encoded:
    """A message checked and serialized for an ``INSERT``, in the tables' column order."""

    message_id: str
    topic: str
    key: str | None
    body: bytes
    headers: str
    content_type: str | None
    content_encoding: str | None
    correlation_id: str | None
    reply_to: str | None

    def params(self, now: float) -> tuple[Any, ...]:
        return (
            self.message_id,
            self.topic,
            self.key,
            self.body,
            self.headers,
            self.content_type,
            self.content_encoding,
            self.correlation_id,
            self.reply_to,
            now,
        )


#: The columns an ``INSERT`` fills, in :meth:`Encoded.params` order.
INSERT_COLUMNS = (
    "message_id, topic, msg_key, body, headers, content_type, content_encoding, "
    "correlation_id, reply_to, created_at"
)
#: The columns a claim reads, in :func:`row_of` order.
ROW_COLUMNS = "id, " + INSERT_COLUMNS


def pack_headers(headers: Mapping[str, HeaderValue] | None) -> str:
    """The ``headers`` column: JSON text of the headers and their types ('' for none)."""
    checked = envelope.check_headers(headers)
    if not checked:
        return ""
    flat, types = envelope.flatten_headers(checked, binary="base64")
    return json.dumps({"h": flat, "t": types}, ensure_ascii=False)


def unpack_headers(column: str) -> dict[str, HeaderValue]:
    if not column:
        return {}
    doc = json.loads(column)
    return envelope.restore_headers(doc["h"], doc.get("t"))


def row_of(values: Sequence[Any]) -> OutboxRow:
    """An :class:`OutboxRow` from the :data:`ROW_COLUMNS` of a row."""
    return OutboxRow(
        id=int(values[0]),
        message_id=values[1],
        topic=values[2],
        key=values[3],
        body=bytes(values[4]),
        headers=unpack_headers(values[5]),
        content_type=values[6],
        content_encoding=values[7],
        correlation_id=values[8],
        reply_to=values[9],
        created_at=float(values[10]),
    )


class SendFields(TypedDict, total=False):
    """What ``outbox.send`` takes besides the topic and value, as ``Producer.send`` does."""

    key: str | None
    headers: Mapping[str, HeaderValue] | None
    content_type: str | None
    content_encoding: str | None
    correlation_id: str | None
    reply_to: str | None


#: A SQLAlchemy ``Session`` or ``Connection`` (loosely typed: SQLAlchemy is not a dependency).
SqlAlchemy = Any


def driver_connection(conn: Any) -> Any:
    """The DB-API connection under a SQLAlchemy ``Session`` (of its current transaction, begun
    if none) or ``Connection``; any other object as it is. SQLAlchemy is not a dependency: it
    is recognised by its module."""
    if not type(conn).__module__.startswith("sqlalchemy."):
        return conn
    if hasattr(conn, "get_bind"):  # a Session
        conn = conn.connection()
    return conn.connection.driver_connection


class Encoder:
    """Checks and serializes what ``Outbox.send`` is given, as ``Producer.send`` would."""

    def __init__(self, serializer: str | Serializer | None) -> None:
        self.serializer = get_serializer(serializer)
        self.content_type = content_type_of(self.serializer)

    def encode(self, topic: str, value: Any, **fields: Unpack[SendFields]) -> Encoded:
        check_name("topic", topic)
        key = fields.get("key")
        content_type = fields.get("content_type")
        content_encoding = fields.get("content_encoding")
        correlation_id = fields.get("correlation_id")
        reply_to = fields.get("reply_to")
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be str or None, not {type(key).__name__}")
        for name, field in (
            ("content_type", content_type),
            ("content_encoding", content_encoding),
            ("correlation_id", correlation_id),
            ("reply_to", reply_to),
        ):
            if field is not None and (not isinstance(field, str) or not field):
                raise TypeError(f"{name} must be a non-empty str or None, not {field!r}")
        return Encoded(
            message_id=new_message_id(),
            topic=topic,
            key=key,
            body=self.serializer.dumps(value),
            headers=pack_headers(fields.get("headers")),
            content_type=content_type or self.content_type,
            content_encoding=content_encoding,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )


class OutboxTable(Protocol):
    """The relay's side of one outbox table (SQLite or PostgreSQL)."""

    #: Where the table lives, for logs (no password).
    where: str

    def claim(self, token: str, limit: int, lease: float) -> list[OutboxRow]:
        """Lease up to ``limit`` publishable rows for ``lease`` seconds, oldest first: rows of
        keys no other live lease holds, so each key's rows come in id order."""
        ...

    def finish(self, ids: Sequence[int], token: str, retention: float) -> int:
        """The broker confirmed these rows: delete them (or mark them sent and delete them
        ``retention`` seconds later). Only rows still leased with ``token``; returns how many."""
        ...

    def release(self, ids: Sequence[int], token: str) -> None:
        """Give leased rows back unsent (the publish failed): the next claim takes them."""
        ...

    def park(self, ids: Sequence[int], token: str) -> None:
        """Lease rows for ever (:data:`PARKED`): never published, their keys held."""
        ...

    def pending(self) -> int:
        """How many rows are not sent yet (parked ones aside)."""
        ...

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Return when new rows may have been committed, after ``timeout`` or when ``stop``."""
        ...

    def close(self) -> None: ...
