"""The message model: what a producer hands a backend and what a consumer gets back."""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from mqkit.envelope import HeaderValue
from mqkit.errors import DecodeError, MessageStateError

Headers = Mapping[str, HeaderValue]

#: The metadata of a delivery whose adapter reports none (shared, read-only).
NO_METADATA: Mapping[str, Any] = MappingProxyType({})


class _IdSource:
    """128-bit ids: 64 random bits per process, then a counter; unique without coordination.

    Cheaper than 16 fresh random bytes per message (a system call each), and a forked child
    draws its own random half so it never repeats its parent's ids.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(int.from_bytes(secrets.token_bytes(4)) << 16)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


new_message_id = _IdSource()


@dataclass(slots=True)
class OutgoingMessage:
    """An encoded message on its way to a backend. Adapters translate it, nothing more.

    Read-only by convention, not frozen: one is built for every ``send``, and a frozen
    dataclass takes twice as long to build.
    """

    topic: str
    body: bytes
    key: str | None = None
    headers: Headers = field(default_factory=dict)
    id: str = field(default_factory=new_message_id)
    timestamp: float = field(default_factory=time.time)
    #: MIME type of ``body`` (from the serializer unless ``send()`` was given one).
    content_type: str | None = None
    #: How ``body`` is encoded on top of its type (e.g. ``gzip``), as in HTTP and AMQP.
    content_encoding: str | None = None
    #: Ties a reply to its request (or messages of one conversation together).
    correlation_id: str | None = None
    #: Where the receiver should send its reply: a topic name.
    reply_to: str | None = None


@dataclass(slots=True)
class Delivery:
    """A message as a backend received it.

    ``attempt`` is the delivery count (1 on first delivery). ``handle`` is the adapter's own
    token for acking (a delivery tag, an offset, a receipt handle); the core never looks inside.
    Read-only by convention, not frozen: one is built for every message received.
    """

    topic: str
    body: bytes
    key: str | None
    headers: Headers
    id: str
    timestamp: float
    attempt: int
    handle: Any = None
    content_type: str | None = None
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    #: The transport's own fields as received (AMQP properties, Kafka partition/offset, STOMP
    #: frame headers, RocketMQ system properties…), for those who need what mqkit does not map.
    metadata: Mapping[str, Any] = field(default_factory=lambda: NO_METADATA)


Settle = Callable[["Message", bool, bool, float], None]
"""How a message reports its fate to its consumer: (message, ack, requeue, delay)."""


class Message:
    """A received message: decoded ``value``, raw ``body``, metadata and ``ack()``/``nack()``.

    If the body could not be decoded, ``error`` holds the :class:`DecodeError` and reading
    ``value`` raises it; the raw ``body`` is always there.
    """

    __slots__ = ("_settle", "_settled", "_value", "delivery", "error")

    def __init__(
        self,
        delivery: Delivery,
        value: Any,
        error: DecodeError | None,
        settle: Settle,
    ) -> None:
        self.delivery = delivery
        self._value = value
        self.error = error
        self._settle = settle
        self._settled: str | None = None

    @property
    def value(self) -> Any:
        """The decoded body; raises :class:`DecodeError` if it could not be decoded."""
        if self.error is not None:
            raise self.error
        return self._value

    @property
    def body(self) -> bytes:
        return self.delivery.body

    @property
    def key(self) -> str | None:
        return self.delivery.key

    @property
    def headers(self) -> Headers:
        return self.delivery.headers

    @property
    def id(self) -> str:
        return self.delivery.id

    @property
    def topic(self) -> str:
        return self.delivery.topic

    @property
    def timestamp(self) -> float:
        return self.delivery.timestamp

    @property
    def attempt(self) -> int:
        return self.delivery.attempt

    @property
    def content_type(self) -> str | None:
        return self.delivery.content_type

    @property
    def content_encoding(self) -> str | None:
        return self.delivery.content_encoding

    @property
    def correlation_id(self) -> str | None:
        return self.delivery.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.delivery.reply_to

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The transport's own fields as received, for what mqkit does not map (read-only)."""
        return self.delivery.metadata

    @property
    def settled(self) -> str | None:
        """``"ack"``, ``"nack"`` or ``None`` while the message is still in flight."""
        return self._settled

    def ack(self) -> None:
        """Confirm the message is processed: the group will not see it again."""
        self._mark("ack")
        self._settle(self, True, False, 0.0)

    def nack(self, requeue: bool = True, *, delay: float = 0.0) -> None:
        """Give the message back.

        With ``requeue`` it is delivered again to the group (after ``delay`` seconds where the
        backend supports delayed redelivery) with ``attempt`` incremented; without it the group
        drops the message, so dead-letter it first if it must be kept.
        """
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self._mark("nack")
        self._settle(self, False, requeue, delay)

    def copy_fields(self) -> dict[str, str | None]:
        """``send()`` arguments that make a copy of this message (a retry copy, a dead letter,
        a replay) keep its standard fields: content type and encoding, correlation id,
        reply-to. ``producer.send(topic, m.body, **m.copy_fields())``. An empty field (another
        client may send one; ``send()`` refuses it) is left out."""
        d = self.delivery
        return {
            "content_type": d.content_type or None,
            "content_encoding": d.content_encoding or None,
            "correlation_id": d.correlation_id or None,
            "reply_to": d.reply_to or None,
        }

    def _mark(self, outcome: str) -> None:
        if self._settled is not None:
            raise already_settled(self.id, self.topic, self._settled)
        self._settled = outcome

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, id={self.id!r}, key={self.key!r}, "
            f"attempt={self.attempt}, size={len(self.body)})"
        )


def already_settled(message_id: str, topic: str, outcome: str) -> MessageStateError:
    """The error for settling a message a second time; the sync and async APIs say the same."""
    return MessageStateError(
        f"message {message_id} on {topic!r} was already {outcome}ed; "
        "a message is settled exactly once"
    )


class _Settleable(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def topic(self) -> str: ...


def check_ack_batch(
    batch: Sequence[_Settleable],
    *,
    ours: Callable[[object], bool],
    settled: Callable[[Any], str | None],
    owner: str,
) -> None:
    """Refuse a batch for ``ack_many`` before anything in it is acked: a message ``ours`` does
    not accept (another consumer's, or not a message), one ``settled`` already, one listed
    twice. ``owner`` names the consumer in the error."""
    for message in batch:
        if not ours(message):
            raise ValueError(
                f"{message!r} was not received from this consumer ({owner}); "
                "ack it through the consumer it came from"
            )
        outcome = settled(message)
        if outcome is not None:
            raise already_settled(message.id, message.topic, outcome)
    if len({id(message) for message in batch}) != len(batch):
        raise ValueError("ack_many: a message is listed twice; a message is settled once")
