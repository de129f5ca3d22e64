"""Dead letters: messages a group gave up on, kept with the reason in their headers.

A group's dead letters go to the topic ``<group>.dlq``; the body, key and headers are those of
the original message, plus ``mqkit-dlq-*`` headers saying where it came from and why.
"""

from __future__ import annotations

import time
import traceback

from mqkit.client import Producer
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


def dead_letter_topic(group: str) -> str:
    return f"{group}.dlq"


def dead_letter_headers(message: Message, group: str, error: BaseException) -> dict[str, str]:
    summary = "".join(traceback.format_exception(error, limit=5))[-TRACEBACK_LIMIT:]
    headers = {k: v for k, v in message.headers.items() if not k.startswith(PREFIX)}
    headers.update(
        {
            TOPIC: message.topic,
            GROUP: group,
            ORIGINAL_ID: message.id,
            ATTEMPT: str(message.attempt),
            ERROR: str(error)[:500],
            ERROR_TYPE: type(error).__name__,
            TRACEBACK: summary,
            TIME: f"{time.time():.3f}",
        }
    )
    return headers


def send_dead_letter(producer: Producer, message: Message, group: str, error: BaseException) -> str:
    """Publish ``message`` unchanged to its group's dead-letter topic; ``producer`` sends bytes."""
    return producer.send(
        dead_letter_topic(group),
        message.body,
        key=message.key,
        headers=dead_letter_headers(message, group, error),
    )
