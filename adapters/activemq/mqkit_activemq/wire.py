"""The envelope on STOMP: where a message goes on ActiveMQ and how its frame is written and read.

Destinations: topic ``T`` is the virtual topic ``/topic/VirtualTopic.T``; group ``G`` reads the
queue ``/queue/Consumer.G.VirtualTopic.T`` that ActiveMQ fills with a copy of every message sent
to ``T`` once the group subscribed.

Headers: ActiveMQ turns every SEND header it does not know into a JMS property and gives it back
on MESSAGE, next to headers of its own (``message-id``, ``priority``, ``expires``…). mqkit's
fields use STOMP's own headers where ActiveMQ keeps them as sent (``timestamp``: the JMS
timestamp) and the envelope's names otherwise (:data:`~mqkit.envelope.ID`,
:data:`~mqkit.envelope.KEY`, :data:`~mqkit.envelope.ATTEMPT`); the key also goes into
``JMSXGroupID`` (message groups), which ActiveMQ does not give back on MESSAGE. A message from
another STOMP or JMS client has no mqkit id: it takes the broker's ``message-id``.

A user header whose name STOMP or ActiveMQ give a meaning to (``priority``, ``type``, ``id``…,
or one starting with ``JMS``, ``AMQ_`` or ``activemq.``) travels as :data:`ESCAPED` + name and
is renamed back on receipt, so user headers round-trip exactly; every other name travels as it
is, readable by other clients. :data:`ESCAPED` is under mqkit's reserved prefix, which the core
refuses in user headers, so an escaped name never collides with a user's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mqkit import envelope
from mqkit.adapter import Delivery, OutgoingMessage

#: Prefix of a user header whose own name STOMP or ActiveMQ reserve.
ESCAPED = envelope.ESCAPED_PREFIX

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
#: Name prefixes ActiveMQ reserves: JMS properties, its scheduler's and its own settings.
RESERVED_PREFIXES = ("jms", "amq_", "activemq.")

_ID = envelope.ID
_KEY = envelope.KEY
_ATTEMPT = envelope.ATTEMPT
_TRANSPORT = envelope.TRANSPORT_FIELDS
_SKIP = _TRANSPORT | RESERVED


def topic_destination(topic: str) -> str:
    return f"/topic/VirtualTopic.{topic}"


def group_segment(group: str) -> str:
    """A group name as one ActiveMQ name segment: ``.`` separates segments, so it becomes ``~``
    (not a character mqkit allows in names, so the mapping stays one-to-one)."""
    return group.replace(".", "~")


def group_destination(topic: str, group: str) -> str:
    return f"/queue/Consumer.{group_segment(group)}.VirtualTopic.{topic}"


def _reserved(name: str) -> bool:
    low = name.lower()
    return low in RESERVED or low.startswith(RESERVED_PREFIXES)


def _escape_name(name: str) -> str:
    # stomp.py escapes header values for STOMP 1.2 but sends names raw; ActiveMQ unescapes both.
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace(":", "\\c")


def encode(message: OutgoingMessage, *, attempt: int = 1, delay_ms: int = 0) -> dict[str, str]:
    """The SEND headers for ``message`` (without ``destination`` and ``receipt``)."""
    headers: dict[str, str] = {}
    for name, value in message.headers.items():
        wire = ESCAPED + name if _reserved(name) else name
        headers[_escape_name(wire)] = value
    headers["persistent"] = "true"
    # round, not int(): a nacked copy re-encodes the decoded milliseconds and must not drift.
    headers["timestamp"] = str(round(message.timestamp * 1000))
    headers[_ID] = message.id
    if message.key is not None:
        headers[_KEY] = message.key
        # ActiveMQ message groups: one consumer of the group at a time gets a key, in order.
        headers["JMSXGroupID"] = message.key
    if attempt > 1:
        headers[_ATTEMPT] = str(attempt)
    if delay_ms > 0:
        headers["AMQ_SCHEDULED_DELAY"] = str(delay_ms)
    return headers


def decode(topic: str, body: bytes, headers: Mapping[str, str], handle: Any) -> Delivery:
    """The delivery in a MESSAGE frame's ``body`` and ``headers`` (mqkit's or another client's)."""
    return Delivery(
        topic=topic,
        body=body,
        key=headers.get(_KEY),
        headers=user_headers(headers),
        id=headers.get(_ID) or headers.get("message-id", ""),
        timestamp=timestamp_of(headers),
        attempt=attempt_of(headers),
        handle=handle,
    )


def user_headers(frame_headers: Mapping[str, str]) -> dict[str, str]:
    """The user's headers out of a MESSAGE frame's headers."""
    out: dict[str, str] = {}
    for name, value in frame_headers.items():
        if name in _SKIP:
            continue
        if name.startswith(ESCAPED):
            out[name[len(ESCAPED) :]] = value
        elif not _reserved(name):
            out[name] = value
    return out


def attempt_of(frame_headers: Mapping[str, str]) -> int:
    """1 + copies made by ``nack`` + 1 if ActiveMQ says it delivered this very message before."""
    try:
        base = max(1, int(frame_headers.get(_ATTEMPT, "1")))
    except ValueError:
        base = 1
    return base + (1 if frame_headers.get("redelivered") == "true" else 0)


def timestamp_of(frame_headers: Mapping[str, str]) -> float:
    """The JMS timestamp (milliseconds) as seconds: the send time mqkit wrote, or the time the
    broker took a message from another client."""
    return envelope.decode_timestamp(frame_headers.get("timestamp"), 0.0) or time.time()
