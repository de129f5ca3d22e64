"""The envelope: every name mqkit itself puts on the wire, spelled once, and the rule for them.

mqkit's own metadata travels as headers named ``mqkit-…`` (lowercase, hyphens: a spelling every
transport accepts). Adapters map the *transport* fields below onto native fields where their
broker has them (Kafka's record key and timestamp, AMQP's ``message_id`` and ``timestamp``,
RocketMQ's keys and born timestamp…) and fall back to these headers otherwise; the *helper*
fields are ordinary headers that the helpers read and write through ``Producer.send``.

The one rule, applied by the core on every backend: a user header may not start with ``mqkit-``
unless it is one of the helper fields (so an application can copy a retried message's headers
onto a new one). Everything else under the prefix belongs to mqkit and is refused at ``send``.

A message from a producer that is not mqkit carries none of these: adapters then take a stable
id from the transport (:func:`transport_id`) and the consumer decodes with its own serializer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

PREFIX = "mqkit-"

# -- transport fields: written and read by adapters only ------------------------------------------
#: The message id mqkit assigned at send (:attr:`mqkit.Message.id`).
ID = PREFIX + "id"
#: The business key, where the transport has no native key field that keeps it as sent.
KEY = PREFIX + "key"
#: Send time in integer milliseconds since the epoch, where the native field is coarser.
TIMESTAMP = PREFIX + "ts"
#: Delivery attempt, for transports that count redeliveries in a copy they publish themselves.
ATTEMPT = PREFIX + "attempt"

#: Prefix under which an adapter carries a user header whose name its transport reserves (e.g.
#: ``JMSType`` on ActiveMQ); renamed back on receipt, so users never see it.
ESCAPED_PREFIX = PREFIX + "h-"

TRANSPORT_FIELDS = frozenset({ID, KEY, TIMESTAMP, ATTEMPT})

# -- helper fields: ordinary headers the helpers set and read ------------------------------------
#: A producer-chosen identity: messages carrying the same value are one message for dedup.
IDEMPOTENCY_KEY = PREFIX + "idempotency-key"
#: The id of the original message, carried by retry copies and replayed dead letters.
ORIGIN_ID = PREFIX + "origin-id"
#: Per-key sequence number, 1, 2, 3… per (source, topic, key).
SEQ = PREFIX + "seq"
#: Which producer instance numbered the message (numbers restart with a new source).
SEQ_SOURCE = PREFIX + "seq-source"

RETRY_PREFIX = PREFIX + "retry-"
#: Tries made before this copy was published (the handler sees this plus its delivery count).
RETRY_ATTEMPTS = RETRY_PREFIX + "attempts"
#: When the copy may run, seconds since the epoch.
RETRY_DUE = RETRY_PREFIX + "due"
#: The topic the message was first published to.
RETRY_TOPIC = RETRY_PREFIX + "topic"

DLQ_PREFIX = PREFIX + "dlq-"
DLQ_TOPIC = DLQ_PREFIX + "topic"
DLQ_GROUP = DLQ_PREFIX + "group"
DLQ_ID = DLQ_PREFIX + "id"
DLQ_ATTEMPT = DLQ_PREFIX + "attempt"
DLQ_ERROR = DLQ_PREFIX + "error"
DLQ_ERROR_TYPE = DLQ_PREFIX + "error-type"
DLQ_TRACEBACK = DLQ_PREFIX + "traceback"
DLQ_TIME = DLQ_PREFIX + "time"

HELPER_FIELDS = frozenset(
    {
        IDEMPOTENCY_KEY,
        ORIGIN_ID,
        SEQ,
        SEQ_SOURCE,
        RETRY_ATTEMPTS,
        RETRY_DUE,
        RETRY_TOPIC,
        DLQ_TOPIC,
        DLQ_GROUP,
        DLQ_ID,
        DLQ_ATTEMPT,
        DLQ_ERROR,
        DLQ_ERROR_TYPE,
        DLQ_TRACEBACK,
        DLQ_TIME,
    }
)

# -- trace context (W3C names, so other instrumented clients continue the trace) -----------------
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The user's headers as a new dict, or an error naming the first bad one.

    Names and values are ``str``; names are not empty and do not use mqkit's reserved prefix
    except for the helper fields.
    """
    if not headers:
        return {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"headers map str to str; got {name!r}: {value!r}")
        if not name:
            raise ValueError("header names must not be empty")
        if name.startswith(PREFIX) and name not in HELPER_FIELDS:
            raise ValueError(
                f"header {name!r} uses mqkit's reserved prefix {PREFIX!r}; "
                "rename it (mqkit sets its own metadata itself)"
            )
        out[name] = value
    return out


def user_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without the transport fields: what :attr:`mqkit.Message.headers` shows."""
    return {k: v for k, v in headers.items() if k not in TRANSPORT_FIELDS}


def encode_timestamp(seconds: float) -> str:
    """A send time as the :data:`TIMESTAMP` header value (integer milliseconds)."""
    return str(round(seconds * 1000))


def decode_timestamp(value: str | bytes | None, default: float) -> float:
    """The :data:`TIMESTAMP` header value in seconds, or ``default`` if absent or malformed."""
    if value is None:
        return default
    try:
        return int(value) / 1000.0
    except ValueError:
        return default


def transport_id(*parts: object) -> str:
    """A stable id for a message that has none of mqkit's, from fields that identify it on
    its transport (e.g. topic, partition and offset; or the broker's message id): the same
    message read twice gets the same id, so idempotency works for foreign producers too."""
    text = "\x1f".join(str(part) for part in parts)
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
