"""The envelope on STOMP: where a message goes on ActiveMQ and how its frame is written and read.

Destinations: topic ``T`` is the virtual topic ``/topic/VirtualTopic.T``; group ``G`` reads the
queue ``/queue/Consumer.G.VirtualTopic.T`` that ActiveMQ fills with a copy of every message sent
to ``T`` once the group subscribed.

Fields: ActiveMQ maps STOMP's ``content-type`` (kept as a property), ``correlation-id``
(JMSCorrelationID), ``reply-to`` (JMSReplyTo, a destination), ``timestamp`` (JMSTimestamp) and
``message-id`` (JMSMessageID, set by the broker) onto JMS, so mqkit's standard fields use them;
``content-encoding`` travels as a property of that name. The id mqkit assigned travels as
:data:`~mqkit.envelope.ID` (a STOMP client cannot set ``message-id``), the key as
:data:`~mqkit.envelope.KEY` and ``JMSXGroupID`` (message groups; ActiveMQ does not give it back
on MESSAGE). A message from another STOMP or JMS client has no mqkit id: it takes the broker's
``message-id``.

Bodies: ActiveMQ makes a JMS TextMessage of a SEND without ``content-length`` and a
BytesMessage otherwise. A text body (JSON or ``text/*`` in UTF-8, no NUL, not content-encoded)
goes without it, so JMS services read it with ``TextMessage.getText()``; every other body goes
with it and arrives byte for byte.

Headers: STOMP carries text only, so typed values follow the core's one rule
(:func:`~mqkit.envelope.flatten_headers` with base64 for bytes, the types under
:data:`~mqkit.envelope.HEADER_TYPES`). ActiveMQ turns every SEND header it does not know into a
(string) JMS property and gives it back on MESSAGE, next to headers of its own (``priority``,
``expires``…). A user header whose name STOMP or ActiveMQ give a meaning to (``priority``,
``type``, ``id``…, or one starting with ``JMS``, ``AMQ_`` or ``activemq.``) travels as
:data:`ESCAPED` + name and is renamed back on receipt, so user headers round-trip exactly; every
other name travels as it is, readable by other clients. :data:`ESCAPED` is under mqkit's reserved
prefix, which the core refuses in user headers, so an escaped name never collides with a user's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mqkit import envelope
from mqkit.adapter import Delivery, OutgoingMessage
from mqkit.envelope import HeaderValue

#: Prefix of a user header whose own name STOMP or ActiveMQ reserve.
ESCAPED = envelope.ESCAPED_PREFIX

#: Headers STOMP or ActiveMQ give a meaning to on SEND or add on MESSAGE (compared lowercased).
RESERVED = frozenset(
    name.lower()
    for name in (
        # STOMP frame headers
        "destination",
        "message-id",
        "subscription",
        "ack",
        "id",
        "receipt",
        "receipt-id",
        "transaction",
        "content-length",
        "content-type",
        "host",
        "login",
        "passcode",
        "accept-version",
        "version",
        "heart-beat",
        "server",
        "session",
        "message",
        # ActiveMQ's mapping of JMS fields
        "correlation-id",
        "expires",
        "persistent",
        "priority",
        "reply-to",
        "type",
        "timestamp",
        "redelivered",
        "original-destination",
        "transformation",
        "transformation-error",
        # added by the broker's scheduler, redelivery and dead-letter machinery
        "scheduledJobId",
        "redeliveryDelay",
        "originalExpiration",
        "dlqDeliveryFailureCause",
    )
)
#: Name prefixes ActiveMQ reserves: JMS properties, its scheduler's and its own settings.
RESERVED_PREFIXES = ("jms", "amq_", "activemq.")

_ID = envelope.ID
_KEY = envelope.KEY
_ATTEMPT = envelope.ATTEMPT
_TYPES = envelope.HEADER_TYPES
_ENCODING = envelope.CONTENT_ENCODING
_TRANSPORT = envelope.TRANSPORT_FIELDS
_SKIP = _TRANSPORT | RESERVED | {_ENCODING}

#: The prefix of the destination of mqkit topic ``T``.
VIRTUAL_TOPIC = "/topic/VirtualTopic."
#: What a raw STOMP destination starts with (a reply-to of another client, ``destination=``).
RAW_PREFIXES = (
    "/queue/",
    "/topic/",
    "/temp-queue/",
    "/temp-topic/",
    "/remote-temp-queue/",
    "/remote-temp-topic/",
)


def topic_destination(topic: str) -> str:
    """Where a message for ``topic`` goes: mqkit's virtual topic, or, for a raw STOMP
    destination (a reply-to that another client set, e.g. ``/queue/replies``), that one."""
    if topic.startswith(RAW_PREFIXES):
        return topic
    return VIRTUAL_TOPIC + topic


def reply_to_topic(destination: str) -> str:
    """A ``reply-to`` as :attr:`mqkit.Message.reply_to`: mqkit's topic name for a virtual topic,
    any other destination (``/queue/x``, a JMS temporary queue…) as it came."""
    if destination.startswith(VIRTUAL_TOPIC) and len(destination) > len(VIRTUAL_TOPIC):
        return destination[len(VIRTUAL_TOPIC) :]
    return destination


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


def is_text(message: OutgoingMessage) -> bool:
    """Whether ``message`` may travel as a JMS TextMessage: its content type is JSON or text in
    UTF-8, it is not content-encoded, and its body is valid UTF-8 without NUL (a frame without
    ``content-length`` ends at the first NUL)."""
    kind = (message.content_type or "").lower()
    mime, _, params = kind.partition(";")
    mime = mime.strip()
    if message.content_encoding or not (mime == "application/json" or mime.startswith("text/")):
        return False
    charset = params.replace(" ", "").partition("charset=")[2].split(";")[0].strip('"')
    if charset not in ("", "utf-8", "utf8", "us-ascii"):
        return False
    if b"\0" in message.body:
        return False
    try:
        message.body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode(message: OutgoingMessage, *, attempt: int = 1, delay_ms: int = 0) -> dict[str, str]:
    """The SEND headers for ``message`` (without ``destination`` and ``receipt``). Connections
    send no ``content-length`` of their own: it is here for every body that is not text."""
    headers: dict[str, str] = {}
    flat, types = envelope.flatten_headers(message.headers, binary="base64")
    for name, value in flat.items():
        wire = ESCAPED + name if _reserved(name) else name
        headers[_escape_name(wire)] = str(value)
    if types is not None:
        headers[_TYPES] = types
    if not is_text(message):
        headers["content-length"] = str(len(message.body))
    if message.content_type:
        headers["content-type"] = message.content_type
    if message.content_encoding:
        headers[_ENCODING] = message.content_encoding
    if message.correlation_id:
        headers["correlation-id"] = message.correlation_id
    if message.reply_to:
        headers["reply-to"] = topic_destination(message.reply_to)
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
    reply_to = headers.get("reply-to")
    return Delivery(
        topic=topic,
        body=body,
        key=headers.get(_KEY),
        headers=user_headers(headers),
        id=headers.get(_ID) or headers.get("message-id", ""),
        timestamp=timestamp_of(headers),
        attempt=attempt_of(headers),
        handle=handle,
        content_type=headers.get("content-type") or None,
        content_encoding=headers.get(_ENCODING) or None,
        correlation_id=headers.get("correlation-id") or None,
        reply_to=reply_to_topic(reply_to) if reply_to else None,
        metadata=dict(headers),
    )


def user_headers(frame_headers: Mapping[str, str]) -> dict[str, HeaderValue]:
    """The user's headers out of a MESSAGE frame's headers, with the types mqkit sent."""
    out: dict[str, str] = {}
    for name, value in frame_headers.items():
        if name in _SKIP:
            continue
        if name.startswith(ESCAPED):
            out[name[len(ESCAPED) :]] = value
        elif not _reserved(name):
            out[name] = value
    return envelope.restore_headers(out, frame_headers.get(_TYPES))


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
