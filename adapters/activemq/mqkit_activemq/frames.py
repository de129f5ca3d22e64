"""How an mqkit message is written into a STOMP frame for ActiveMQ, and read back.

ActiveMQ turns every SEND header it does not know into a JMS property and gives it back on
MESSAGE, next to headers of its own (``message-id``, ``priority``, ``expires``…). So that user
headers round-trip exactly, a user header whose name ActiveMQ or STOMP give a meaning to (or that
starts with one of the reserved prefixes) is sent as ``mqkit.h.<name>`` and renamed back on
receipt; every other user header travels under its own name, readable by non-mqkit clients.

mqkit's own metadata travels in ``mqkit.*`` headers: ``mqkit.id``, ``mqkit.key``, ``mqkit.ts``
(send time, float seconds) and ``mqkit.attempt`` (only on copies made by ``nack``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from mqkit.message import OutgoingMessage

ID = "mqkit.id"
KEY = "mqkit.key"
TIMESTAMP = "mqkit.ts"
ATTEMPT = "mqkit.attempt"
ESCAPE = "mqkit.h."

#: Headers STOMP or ActiveMQ give a meaning to on SEND or add on MESSAGE (compared lowercased).
RESERVED = frozenset(
    name.lower()
    for name in (
        # STOMP frame headers
        "destination", "message-id", "subscription", "ack", "id", "receipt", "receipt-id",
        "transaction", "content-length", "content-type", "host", "login", "passcode",
        "accept-version", "version", "heart-beat", "server", "session", "message",
        # ActiveMQ's mapping of JMS fields
        "correlation-id", "expires", "persistent", "priority", "reply-to", "type",
        "timestamp", "redelivered", "original-destination", "transformation",
        "transformation-error",
        # added by the broker's scheduler, redelivery and dead-letter machinery
        "scheduledJobId", "redeliveryDelay", "originalExpiration", "dlqDeliveryFailureCause",
    )
)
RESERVED_PREFIXES = ("jms", "amq_", "activemq.", "mqkit.")


def _reserved(name: str) -> bool:
    low = name.lower()
    return low in RESERVED or low.startswith(RESERVED_PREFIXES)


def _escape_name(name: str) -> str:
    # stomp.py escapes header values for STOMP 1.2 but sends names raw; ActiveMQ unescapes both.
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace(":", "\\c")


def send_headers(
    message: OutgoingMessage, *, attempt: int = 1, delay_ms: int = 0
) -> dict[str, str]:
    """The SEND headers for ``message`` (without ``destination`` and ``receipt``)."""
    headers: dict[str, str] = {}
    for name, value in message.headers.items():
        wire = ESCAPE + name if _reserved(name) else name
        headers[_escape_name(wire)] = value
    headers["persistent"] = "true"
    headers[ID] = message.id
    headers[TIMESTAMP] = repr(message.timestamp)
    if message.key is not None:
        headers[KEY] = message.key
        # ActiveMQ message groups: one consumer of the group at a time gets a key, in order.
        headers["JMSXGroupID"] = message.key
    if attempt > 1:
        headers[ATTEMPT] = str(attempt)
    if delay_ms > 0:
        headers["AMQ_SCHEDULED_DELAY"] = str(delay_ms)
    return headers


def user_headers(frame_headers: Mapping[str, str]) -> dict[str, str]:
    """The user's headers out of a MESSAGE frame's headers."""
    out: dict[str, str] = {}
    for name, value in frame_headers.items():
        if name.startswith(ESCAPE):
            out[name[len(ESCAPE) :]] = value
        elif not _reserved(name):
            out[name] = value
    return out


def attempt_of(frame_headers: Mapping[str, str]) -> int:
    """1 + copies made by ``nack`` + 1 if ActiveMQ says it delivered this very message before."""
    try:
        base = max(1, int(frame_headers.get(ATTEMPT, "1")))
    except ValueError:
        base = 1
    return base + (1 if frame_headers.get("redelivered") == "true" else 0)


def timestamp_of(frame_headers: Mapping[str, str]) -> float:
    try:
        return float(frame_headers[TIMESTAMP])
    except (KeyError, ValueError):
        pass
    try:  # a message from a non-mqkit producer: the broker's JMS timestamp, in ms
        return int(frame_headers["timestamp"]) / 1000.0
    except (KeyError, ValueError):
        return time.time()
