"""Dead letters: messages a group gave up on, kept with the reason in their headers.

A group's dead letters go to the topic ``<group>.dlq``; the body, key and headers are those of
the original message, plus ``mqkit-dlq-*`` headers saying where it came from and why:

========================  ==========================================================
header                    value
========================  ==========================================================
``mqkit-dlq-topic``       the topic the message was first published to
``mqkit-dlq-group``       the group that gave up on it
``mqkit-dlq-id``          the id of the original message
``mqkit-dlq-attempt``     how many times the group tried to process it
``mqkit-dlq-error``       ``str(error)`` of the last failure (at most 500 characters)
``mqkit-dlq-error-type``  the exception's class name
``mqkit-dlq-traceback``   the end of the formatted traceback (at most 2000 characters)
``mqkit-dlq-time``        when it was dead-lettered, seconds since the epoch
========================  ==========================================================

A broker keeps messages only for groups that exist when they are sent, so the group
``<group>.dlq`` (:func:`dead_letter_group`) is subscribed to the dead-letter topic before
anything is dead-lettered (:func:`ensure_dead_letter_group`, done by ``App.run``); it is the
group ``mqkit dlq list`` and ``mqkit dlq replay`` read. Other groups may subscribe too (an
alerting service, say); each gets every dead letter.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass

from mqkit.client import Broker, Producer
from mqkit.message import Message

PREFIX = "mqkit-dlq-"
TOPIC = PREFIX + "topic"
GROUP = PREFIX + "group"
ORIGINAL_ID = PREFIX + "id"
ATTEMPT = PREFIX + "attempt"
ERROR = PREFIX + "error"
ERROR_TYPE = PREFIX + "error-type"
TRACEBACK = PREFIX + "traceback"
TIME = PREFIX + "time"

#: Longest traceback summary kept in a header (brokers limit header sizes).
TRACEBACK_LIMIT = 2000
#: Longest error text kept in a header.
ERROR_LIMIT = 500


def dead_letter_topic(group: str) -> str:
    return f"{group}.dlq"


def dead_letter_group(group: str) -> str:
    """The group that keeps ``group``'s dead letters for ``mqkit dlq list/replay``."""
    return f"{group}.dlq"


def ensure_dead_letter_group(broker: Broker, group: str) -> None:
    """Subscribe :func:`dead_letter_group` so dead letters sent from now on are kept."""
    broker.consumer(
        dead_letter_topic(group), group=dead_letter_group(group), serializer="bytes"
    ).close()


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
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The dead letter's headers: the original ones plus the ``mqkit-dlq-*`` ones.

    ``topic``, ``original_id``, ``attempt`` and ``headers`` override what ``message`` says, for
    a message that is itself a retry copy of the original (see :mod:`mqkit.helpers.retry`).
    """
    base = message.headers if headers is None else headers
    out = {k: v for k, v in base.items() if not k.startswith(PREFIX)}
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
    headers: Mapping[str, str] | None = None,
) -> str:
    """Publish ``message`` unchanged to its group's dead-letter topic; ``producer`` sends bytes."""
    return producer.send(
        dead_letter_topic(group),
        message.body,
        key=message.key,
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
    headers: dict[str, str]
    """The original message's own headers, without the ``mqkit-dlq-*`` ones."""

    @classmethod
    def of(cls, message: Message) -> DeadLetter:
        h = message.headers
        try:
            attempt = int(h.get(ATTEMPT, "0"))
        except ValueError:
            attempt = 0
        try:
            when = float(h.get(TIME, "0"))
        except ValueError:
            when = 0.0
        return cls(
            topic=h.get(TOPIC, ""),
            group=h.get(GROUP, ""),
            original_id=h.get(ORIGINAL_ID, message.id),
            attempt=attempt,
            error=h.get(ERROR, ""),
            error_type=h.get(ERROR_TYPE, ""),
            traceback=h.get(TRACEBACK, ""),
            time=when,
            headers={k: v for k, v in h.items() if not k.startswith(PREFIX)},
        )
