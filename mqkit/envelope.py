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

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Literal

#: What a header value may be. Transports with typed headers (AMQP) keep the type; the others
#: carry text and restore the type from :data:`HEADER_TYPES` (see :func:`flatten_headers`).
HeaderValue = str | bytes | int | float | bool

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
#: The types of the headers a text-only transport carries as text: a JSON object mapping a
#: header name to ``"int"``, ``"float"``, ``"bool"`` or ``"bytes"`` (str headers are not listed).
HEADER_TYPES = PREFIX + "types"

#: Prefix under which an adapter carries a user header whose name its transport reserves (e.g.
#: ``JMSType`` on ActiveMQ); renamed back on receipt, so users never see it.
ESCAPED_PREFIX = PREFIX + "h-"

TRANSPORT_FIELDS = frozenset({ID, KEY, TIMESTAMP, ATTEMPT, HEADER_TYPES})

# -- standard fields: the names other clients use, for transports without a native field ------
# AMQP and JMS/STOMP carry these natively; Kafka and RocketMQ carry them as headers/properties
# of these names (the ones STOMP uses, so one spelling serves every text transport).
CONTENT_TYPE = "content-type"
CONTENT_ENCODING = "content-encoding"
CORRELATION_ID = "correlation-id"
REPLY_TO = "reply-to"
STANDARD_FIELDS = frozenset({CONTENT_TYPE, CONTENT_ENCODING, CORRELATION_ID, REPLY_TO})

# -- helper fields: ordinary headers the helpers set and read ------------------------------------
#: A producer-chosen identity: messages carrying the same value are one message for dedup.
IDEMPOTENCY_KEY = PREFIX + "idempotency-key"
#: The id of the original message, carried by retry copies and replayed dead letters.
ORIGIN_ID = PREFIX + "origin-id"
#: Per-key sequence number, 1, 2, 3… per (source, topic, key).
SEQ = PREFIX + "seq"
#: Which producer instance numbered the message (numbers restart with a new source).
SEQ_SOURCE = PREFIX + "seq-source"
#: The W3C ``traceparent`` of the message a copy was made of (retry copy, dead letter, replay),
#: so that tracing links the copy's processing to the original (:mod:`mqkit.telemetry`).
ORIGIN_TRACEPARENT = PREFIX + "origin-traceparent"

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
        ORIGIN_TRACEPARENT,
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
# Plain user headers on every transport (mqkit.telemetry writes and reads them when instrumented).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def check_headers(headers: Mapping[str, HeaderValue] | None) -> dict[str, HeaderValue]:
    """The user's headers as a new dict, or an error naming the first bad one.

    Names are non-empty ``str`` outside mqkit's reserved prefix (except the helper fields)
    and the standard fields (pass those as ``send()`` arguments); values are ``str``,
    ``bytes``, ``int``, ``float`` or ``bool``.
    """
    if not headers:
        return {}
    out: dict[str, HeaderValue] = {}
    for name, given in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"header names are str; got {name!r}")
        value: object = given
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if not isinstance(value, str | bytes | int | float):  # bool is an int
            raise TypeError(
                f"header {name!r}: values are str, bytes, int, float or bool, "
                f"not {type(value).__name__}"
            )
        if name.lower() in STANDARD_FIELDS:
            raise ValueError(
                f"header {name!r} is a standard field: pass it as send(..., "
                f"{name.lower().replace('-', '_')}=...) so every transport maps it natively"
            )
        if not name:
            raise ValueError("header names must not be empty")
        if name.startswith(PREFIX) and name not in HELPER_FIELDS:
            raise ValueError(
                f"header {name!r} uses mqkit's reserved prefix {PREFIX!r}; "
                "rename it (mqkit sets its own metadata itself)"
            )
        out[name] = value
    return out


def copyable_headers(headers: Mapping[str, HeaderValue]) -> dict[str, HeaderValue]:
    """The received ``headers`` a copy of the message (a retry copy, a dead letter) may carry:
    without the names :func:`check_headers` refuses (empty, a standard field's, or mqkit's
    reserved prefix outside the helper fields), which another producer may have set. Sending
    them would raise and stop the consumer; they stay in the original's metadata."""
    return {
        name: value
        for name, value in headers.items()
        if name
        and name.lower() not in STANDARD_FIELDS
        and (not name.startswith(PREFIX) or name in HELPER_FIELDS)
    }


def header_text(headers: Mapping[str, HeaderValue], name: str, default: str = "") -> str:
    """Header ``name`` as text (how the helpers read their fields, whichever transport typed
    them): ``str`` as is, bytes decoded as UTF-8, numbers and booleans as ``str()``."""
    value = headers.get(name)
    if value is None:
        return default
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def user_headers(headers: Mapping[str, HeaderValue]) -> dict[str, HeaderValue]:
    """``headers`` without the transport fields: what :attr:`mqkit.Message.headers` shows."""
    return {k: v for k, v in headers.items() if k not in TRANSPORT_FIELDS}


def encode_timestamp(seconds: float) -> str:
    """A send time as the :data:`TIMESTAMP` header value (integer milliseconds)."""
    return str(round(seconds * 1000))


def decode_timestamp(value: str | bytes | None, default: float) -> float:
    """The :data:`TIMESTAMP` header value in seconds, or ``default`` if absent or malformed
    (not an integer, too large for a float, or of a type a typed transport gave it)."""
    if value is None:
        return default
    try:
        return int(value) / 1000.0
    except (TypeError, ValueError, OverflowError):
        return default


def transport_id(*parts: object) -> str:
    """A stable id for a message that has none of mqkit's, from fields that identify it on
    its transport (e.g. topic, partition and offset; or the broker's message id): the same
    message read twice gets the same id, so idempotency works for foreign producers too."""
    text = "\x1f".join(str(part) for part in parts)
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def flatten_headers(
    headers: Mapping[str, HeaderValue], *, binary: Literal["raw", "base64"]
) -> tuple[dict[str, str | bytes], str | None]:
    """Headers for a text-only transport, and the :data:`HEADER_TYPES` value (``None`` when
    every value is ``str``).

    The one rule: numbers travel in decimal (``repr`` for floats), booleans as ``true`` /
    ``false``, bytes as they are where the transport takes bytes (``binary="raw"``, Kafka) or
    in base64 where it takes only text (``"base64"``: STOMP, RocketMQ). A plain consumer reads
    the text; an mqkit consumer gets the original types back (:func:`restore_headers`).
    """
    out: dict[str, str | bytes] = {}
    types: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(value, str):
            out[name] = str(value)
            continue
        if isinstance(value, bool):
            out[name], types[name] = ("true" if value else "false"), "bool"
        elif isinstance(value, bytes):
            encoded = bytes(value) if binary == "raw" else base64.b64encode(value).decode("ascii")
            out[name], types[name] = encoded, "bytes"
        elif isinstance(value, int):
            out[name], types[name] = str(int(value)), "int"
        else:
            out[name], types[name] = repr(float(value)), "float"
    return out, (json.dumps(types, separators=(",", ":")) if types else None)


def restore_headers(
    headers: Mapping[str, str | bytes], types: str | bytes | None
) -> dict[str, HeaderValue]:
    """Headers from a text-only transport with their types restored from :data:`HEADER_TYPES`.

    Values without a type stay text; a bytes value (Kafka) is decoded as UTF-8 when it is
    valid UTF-8 and stays ``bytes`` otherwise, so nothing is ever corrupted. A type entry that
    does not parse leaves the value as it came.
    """
    kinds: dict[str, str] = {}
    if types:
        try:
            loaded = json.loads(types)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
            loaded = None
        if isinstance(loaded, dict):
            kinds = {str(k): str(v) for k, v in loaded.items()}
    out: dict[str, HeaderValue] = {}
    for name, raw in headers.items():
        kind = kinds.get(name)
        if kind == "bytes":
            if isinstance(raw, bytes):
                out[name] = raw
                continue
            try:
                out[name] = base64.b64decode(raw, validate=True)
                continue
            except ValueError:
                pass
        text: str | None
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                out[name] = raw
                continue
        else:
            text = raw
        value: HeaderValue = text
        try:
            if kind == "int":
                value = int(text)
            elif kind == "float":
                value = float(text)
            elif kind == "bool" and text in ("true", "false"):
                value = text == "true"
        except ValueError:
            pass
        out[name] = value
    return out
