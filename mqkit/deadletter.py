"""Dead letters: messages a group gave up on, kept with the reason in their headers — written,
read and replayed here, the one place that knows their topics and groups.

A group's dead letters go to the topic ``<group>.dlq``; the body, key and headers are those of
the original message, plus the dead-letter headers of :mod:`mqkit.envelope` (their wire names
are tabled in docs/reliability.md) saying where it came from and why:

=====================  ===========================================================
envelope name          value
=====================  ===========================================================
``DLQ_TOPIC``          the topic the message was first published to
``DLQ_GROUP``          the group that gave up on it
``DLQ_ID``             the id of the original message
``DLQ_ATTEMPT``        how many times the group tried to process it
``DLQ_ERROR``          ``str(error)`` of the last failure (at most 500 characters)
``DLQ_ERROR_TYPE``     the exception's class name
``DLQ_TRACEBACK``      the end of the formatted traceback (at most 2000 characters)
``DLQ_TIME``           when it was dead-lettered, seconds since the epoch
=====================  ===========================================================

A broker keeps messages only for groups that exist when they are sent, so the group
``<group>.dlq`` (:func:`dead_letter_group`) is subscribed to the dead-letter topic before
anything is dead-lettered (:func:`ensure_dead_letter_group`, done by ``App.run``); it is the
group :func:`list_dead_letters` and :func:`replay` (``mqkit dlq list/replay``) read. Other
groups may subscribe too (an alerting service, say); each gets every dead letter.

* :func:`list_dead_letters` receives up to ``limit`` dead letters and gives them back to the
  group (it never acks), so listing changes nothing but their delivery count.
* :func:`replay` re-publishes dead letters and acks them once the copies are confirmed. By
  default a replay goes to ``<group>.retry`` (:func:`replay_topic`), which the route's retry
  relay (the retry helper) consumes: only the group that gave up on the message gets
  it again, with a fresh attempt count. ``to="topic"`` publishes to the original topic instead,
  which **every** group of that topic receives (useful when the route has no retry middleware,
  or all groups must see it).

Replayed messages carry :data:`~mqkit.envelope.ORIGIN_ID` (the original id), so the idempotency
helper treats them as the same message: one that did succeed in the meantime is not run twice.

This module is part of the core (the App dead-letters undecodable messages itself, so that a
bad payload is never lost); it needs only the client and the envelope.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from mqkit import envelope
from mqkit.client import Broker, Consumer, Producer
from mqkit.envelope import HeaderValue
from mqkit.message import Message

#: The dead-letter headers, by their short names here (spelled in :mod:`mqkit.envelope`).
PREFIX = envelope.DLQ_PREFIX
TOPIC = envelope.DLQ_TOPIC
GROUP = envelope.DLQ_GROUP
ORIGINAL_ID = envelope.DLQ_ID
ATTEMPT = envelope.DLQ_ATTEMPT
ERROR = envelope.DLQ_ERROR
ERROR_TYPE = envelope.DLQ_ERROR_TYPE
TRACEBACK = envelope.DLQ_TRACEBACK
TIME = envelope.DLQ_TIME

#: Longest traceback summary kept in a header (brokers limit header sizes).
TRACEBACK_LIMIT = 2000
#: Longest error text kept in a header.
ERROR_LIMIT = 500


def dead_letter_topic(group: str) -> str:
    """Where ``group``'s dead letters are published."""
    return f"{group}.dlq"


def dead_letter_group(group: str) -> str:
    """The group that keeps ``group``'s dead letters for ``mqkit dlq list/replay``."""
    return f"{group}.dlq"


def replay_topic(group: str) -> str:
    """Where :func:`replay` puts ``group``'s dead letters back: the group's one retry topic
    (``<group>.retry``, also its relay's group), so replays need no topic of their own."""
    return f"{group}.retry"


def dead_letter_consumer(broker: Broker, group: str) -> Consumer:
    """A member of the keeper group of ``group``'s dead letters (raw bodies), with the
    backend's options for helper groups so every member agrees."""
    return broker.consumer(
        dead_letter_topic(group),
        group=dead_letter_group(group),
        serializer="bytes",
        **broker.features.helper_group_options,
    )


_ensured: weakref.WeakKeyDictionary[Broker, set[str]] = weakref.WeakKeyDictionary()
_ensured_lock = threading.Lock()


def ensure_dead_letter_group(broker: Broker, group: str) -> None:
    """Subscribe :func:`dead_letter_group` so dead letters sent from now on are kept (once per
    broker object: joining a group is a round of the group protocol on some backends)."""
    with _ensured_lock:
        if group in _ensured.setdefault(broker, set()):
            return
    dead_letter_consumer(broker, group).close()
    with _ensured_lock:
        _ensured.setdefault(broker, set()).add(group)


def traceback_summary(error: BaseException) -> str:
    """The innermost part of ``error``'s traceback, short enough for a header."""
    return "".join(traceback.format_exception(error))[-TRACEBACK_LIMIT:]


def dead_letter_headers(
    message: Message,
    group: str,
    error: BaseException,
    *,
    topic: str | None = None,
    original_id: str | None = None,
    attempt: int | None = None,
    headers: Mapping[str, HeaderValue] | None = None,
) -> dict[str, HeaderValue]:
    """The dead letter's headers: the original ones plus the dead-letter ones.

    ``topic``, ``original_id``, ``attempt`` and ``headers`` override what ``message`` says, for
    a message that is itself a retry copy of the original (made by the retry helper).
    """
    base = message.headers if headers is None else headers
    out = {k: v for k, v in envelope.copyable_headers(base).items() if not k.startswith(PREFIX)}
    out.update(
        {
            TOPIC: message.topic if topic is None else topic,
            GROUP: group,
            ORIGINAL_ID: message.id if original_id is None else original_id,
            ATTEMPT: str(message.attempt if attempt is None else attempt),
            ERROR: str(error)[:ERROR_LIMIT],
            ERROR_TYPE: type(error).__name__,
            TRACEBACK: traceback_summary(error),
            TIME: f"{time.time():.3f}",
        }
    )
    return out


def send_dead_letter(
    producer: Producer,
    message: Message,
    group: str,
    error: BaseException,
    *,
    topic: str | None = None,
    original_id: str | None = None,
    attempt: int | None = None,
    headers: Mapping[str, HeaderValue] | None = None,
) -> str:
    """Publish ``message`` unchanged to its group's dead-letter topic; ``producer`` sends bytes."""
    return producer.send(
        dead_letter_topic(group),
        message.body,
        key=message.key,
        **message.copy_fields(),
        headers=dead_letter_headers(
            message,
            group,
            error,
            topic=topic,
            original_id=original_id,
            attempt=attempt,
            headers=headers,
        ),
    )


@dataclass(frozen=True)
class DeadLetter:
    """What a dead letter's headers say about it (see the table above)."""

    topic: str
    group: str
    original_id: str
    attempt: int
    error: str
    error_type: str
    traceback: str
    time: float
    headers: dict[str, HeaderValue]
    """The original message's own headers, without the dead-letter ones."""

    @classmethod
    def of(cls, message: Message) -> DeadLetter:
        h = message.headers

        def text(name: str, default: str = "") -> str:
            return envelope.header_text(h, name, default)

        try:  # headers another producer wrote may say anything: unknown is 0
            attempt = max(0, int(text(ATTEMPT, "0")))
        except ValueError:
            attempt = 0
        try:
            when = float(text(TIME, "0"))
        except ValueError:
            when = 0.0
        if not math.isfinite(when):
            when = 0.0
        return cls(
            topic=text(TOPIC),
            group=text(GROUP),
            original_id=text(ORIGINAL_ID, message.id),
            attempt=attempt,
            error=text(ERROR),
            error_type=text(ERROR_TYPE),
            traceback=text(TRACEBACK),
            time=when,
            headers={k: v for k, v in h.items() if not k.startswith(PREFIX)},
        )


# -- reading and replaying (``mqkit dlq list`` / ``mqkit dlq replay``) -------------------------


@dataclass(frozen=True)
class Listed:
    """One dead letter: the message as kept (raw body) and what its headers say."""

    message: Message
    info: DeadLetter


def _matches(message: Message, info: DeadLetter, ids: Collection[str] | None) -> bool:
    return not ids or info.original_id in ids or message.id in ids


def list_dead_letters(
    broker: Broker,
    group: str,
    *,
    limit: int = 100,
    wait: float = 1.0,
    first_wait: float = 10.0,
) -> list[Listed]:
    """Up to ``limit`` of ``group``'s dead letters, oldest first; all stay in the queue.

    Waits up to ``first_wait`` seconds for the first one (a broker may take seconds to assign
    a new consumer), then stops once none came for ``wait`` seconds.
    """
    out: list[Listed] = []
    consumer = dead_letter_consumer(broker, group)
    try:
        while len(out) < limit:
            message = consumer.receive(timeout=wait if out else max(wait, first_wait))
            if message is None:
                break
            out.append(Listed(message, DeadLetter.of(message)))
    finally:
        consumer.close()  # nothing acked: everything goes back to the group
    return out


@dataclass(frozen=True)
class Replayed:
    original_id: str
    topic: str
    to: str
    new_id: str


def replay(
    broker: Broker,
    group: str,
    *,
    to: Literal["group", "topic"] = "group",
    ids: Collection[str] | None = None,
    limit: int | None = None,
    wait: float = 1.0,
    first_wait: float = 10.0,
    batch: int = 100,
) -> list[Replayed]:
    """Re-publish ``group``'s dead letters (those in ``ids``, or all) and ack them.

    Each batch is flushed before its dead letters are acked: a crash in between replays a
    message twice, never zero times. ``wait`` and ``first_wait`` as for
    :func:`list_dead_letters`.
    """
    done: list[Replayed] = []
    consumer = dead_letter_consumer(broker, group)
    producer = broker.producer(serializer="bytes")
    pending: list[Message] = []
    seen = 0
    try:
        while limit is None or len(done) < limit:
            message = consumer.receive(timeout=wait if seen else max(wait, first_wait))
            seen += 1
            if message is None:
                break
            info = DeadLetter.of(message)
            if not _matches(message, info, ids):
                continue  # left unacked: given back when the consumer closes
            headers = dict(info.headers)
            headers[envelope.ORIGIN_ID] = info.original_id
            if to == "group":
                target = replay_topic(group)
                headers.update(
                    {
                        envelope.RETRY_TOPIC: info.topic,
                        envelope.RETRY_ATTEMPTS: "0",
                        envelope.RETRY_DUE: f"{time.time():.3f}",
                    }
                )
            else:
                target = info.topic
            new_id = producer.send(
                target, message.body, key=message.key, headers=headers, **message.copy_fields()
            )
            done.append(Replayed(info.original_id, info.topic, target, new_id))
            pending.append(message)
            if len(pending) >= batch:
                producer.flush()
                for m in pending:
                    m.ack()
                pending.clear()
        producer.flush()
        for m in pending:
            m.ack()
    finally:
        producer.close()
        consumer.close()
    return done
