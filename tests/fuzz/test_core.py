"""Hostile input to the core's decoders: the envelope's header and time parsing, the
serializers as a consumer runs them, and the retry and dead-letter header parsers.

The contract: decoding never raises; a body that cannot be decoded gives a message whose
``error`` is a :class:`~mqkit.DecodeError` (and whose ``value`` raises it); times are finite,
attempts at least 1, and typed headers come back exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import mqkit
from mqkit import envelope
from mqkit.cli import _body as dead_letter_body
from mqkit.client import Consumer
from mqkit.deadletter import DeadLetter, dead_letter_headers, send_dead_letter
from mqkit.envelope import HeaderValue
from mqkit.errors import DecodeError
from mqkit.helpers.ordering import SequenceChecker
from mqkit.helpers.retry import original_view, retry_due
from mqkit.message import Delivery, Message
from mqkit.serialization import get_serializer

from .strategies import (
    FUZZ,
    MQKIT_NAMES,
    bodies,
    content_encodings,
    content_types,
    header_names,
    header_values,
    text_values,
)


def _same(a: HeaderValue, b: HeaderValue) -> bool:
    """Equal and of the same type (``True`` is not ``1``); NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


def _delivery(
    body: bytes = b"{}",
    headers: dict[str, HeaderValue] | None = None,
    content_type: str | None = None,
    content_encoding: str | None = None,
    attempt: int = 1,
) -> Delivery:
    return Delivery(
        topic="orders",
        body=body,
        key=None,
        headers=headers or {},
        id="0" * 32,
        timestamp=1.0,
        attempt=attempt,
        content_type=content_type,
        content_encoding=content_encoding,
    )


def _unsettled(message: Message, ack: bool, requeue: bool, delay: float) -> None:
    pass


# -- envelope --------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.none(), text_values, st.binary(max_size=30)))
@example("9" * 400)  # int("9" * 400) / 1000.0 overflowed a float
def test_timestamps_parse_to_a_finite_time_or_the_default(value: str | bytes | None) -> None:
    got = envelope.decode_timestamp(value, 5.0)
    assert isinstance(got, float) and math.isfinite(got)


@FUZZ
@given(
    st.dictionaries(header_names, st.one_of(text_values, st.binary(max_size=30)), max_size=10),
    st.one_of(
        st.none(),
        text_values,
        st.binary(max_size=30),
        st.dictionaries(header_names, st.sampled_from(["int", "float", "bool", "bytes", "x"])).map(
            json.dumps
        ),
    ),
)
@example({"a": "1"}, "[" * 100_000)  # a type map nested too deep for the JSON parser
def test_restore_headers_takes_any_text_headers_and_type_map(
    headers: dict[str, str | bytes], types: str | bytes | None
) -> None:
    restored = envelope.restore_headers(headers, types)
    assert set(restored) == set(headers)
    for value in restored.values():
        assert isinstance(value, str | bytes | int | float | bool)


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=20),
        st.one_of(
            st.text(max_size=20), st.binary(max_size=20), st.integers(), st.floats(), st.booleans()
        ),
        max_size=10,
    ),
    st.booleans(),
)
def test_flattened_headers_come_back_with_their_types(
    headers: dict[str, HeaderValue], raw: bool
) -> None:
    flat, types = envelope.flatten_headers(headers, binary="raw" if raw else "base64")
    if raw:  # Kafka carries every value as bytes
        wire: dict[str, str | bytes] = {
            k: v.encode() if isinstance(v, str) else v for k, v in flat.items()
        }
    else:
        wire = dict(flat)
    restored = envelope.restore_headers(wire, types)
    assert set(restored) == set(headers)
    for name, value in headers.items():
        assert _same(restored[name], value), (name, value, restored[name])


@FUZZ
@given(st.dictionaries(header_names, header_values, max_size=8), header_names)
def test_header_text_reads_any_value(headers: dict[str, HeaderValue], name: str) -> None:
    assert isinstance(envelope.header_text(headers, name), str)


# -- bodies: what a consumer does with a delivery ------------------------------------------------


@pytest.fixture(scope="module")
def consumers() -> Iterator[dict[str, Consumer]]:
    """A memory consumer per built-in serializer; the tests call its decoding step directly."""
    with mqkit.connect("memory://fuzz-bodies") as broker:
        yield {
            name: broker.consumer("orders", group=f"fuzz-{name}", serializer=name)
            for name in ("json", "bytes", "text")
        }


@FUZZ
@given(
    bodies,
    content_types,
    content_encodings,
    st.sampled_from(["json", "bytes", "text"]),
)
@example(b"[" * 5000, "application/json", None, "json")  # nested too deep: RecursionError
@example(b"\x1f\x8b\x08\x00", None, "gzip", "json")  # a truncated gzip stream
def test_a_body_decodes_to_a_value_or_a_decode_error(
    consumers: dict[str, Consumer],
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    serializer: str,
) -> None:
    delivery = _delivery(body, None, content_type, content_encoding)
    message = consumers[serializer]._wrap(delivery)
    assert message.body == body
    if message.error is not None:
        assert isinstance(message.error, DecodeError)
        with pytest.raises(DecodeError):
            message.value  # noqa: B018
    if serializer == "bytes" and not content_encoding:
        assert message.value == body


@FUZZ
@given(bodies)
@example(b"[" * 5000)  # `mqkit dlq list` stopped at a dead letter nested too deep to parse
def test_the_cli_shows_any_dead_letter_body(body: bytes) -> None:
    shown = dead_letter_body(body)
    assert set(shown) in ({"value"}, {"body_base64"})


@pytest.mark.parametrize("name", ["json", "bytes", "text", "JSON"])
def test_every_builtin_serializer_is_covered(name: str) -> None:
    """The body test above runs each built-in serializer a consumer can be given by name."""
    assert get_serializer(name) is get_serializer(name.lower())


# -- the retry and dead-letter headers -----------------------------------------------------------

_RETRY_HEADERS = st.dictionaries(
    st.sampled_from(MQKIT_NAMES), st.one_of(header_values, st.text(max_size=5)), max_size=8
)


@FUZZ
@given(_RETRY_HEADERS, st.integers(1, 50))
@example({envelope.RETRY_ATTEMPTS: "-7"}, 1)  # a negative count made attempt <= 0
def test_a_retry_copys_view_has_a_sane_attempt_topic_and_id(
    headers: dict[str, HeaderValue], attempt: int
) -> None:
    message = Message(_delivery(headers=headers, attempt=attempt), 1, None, _unsettled)
    view = original_view(message)
    assert view.attempt >= 1
    assert isinstance(view.topic, str) and isinstance(view.id, str)
    assert not any(k.startswith(envelope.RETRY_PREFIX) for k in view.headers) or view is message


@FUZZ
@given(_RETRY_HEADERS)
@example({envelope.RETRY_DUE: "nan"})  # never due, never earlier than another: a stuck heap
@example({envelope.RETRY_DUE: "inf"})
def test_a_retry_copys_due_time_is_finite(headers: dict[str, HeaderValue]) -> None:
    due = retry_due(headers)
    assert isinstance(due, float) and math.isfinite(due)


@FUZZ
@given(_RETRY_HEADERS)
@example({envelope.DLQ_TIME: "nan", envelope.DLQ_ATTEMPT: "-3"})
def test_a_dead_letters_headers_parse_to_sane_values(headers: dict[str, HeaderValue]) -> None:
    info = DeadLetter.of(Message(_delivery(headers=headers), None, None, _unsettled))
    assert info.attempt >= 0
    assert math.isfinite(info.time)
    for field in (info.topic, info.group, info.original_id, info.error, info.traceback):
        assert isinstance(field, str)
    assert not any(k.startswith(envelope.DLQ_PREFIX) for k in info.headers)


@FUZZ
@given(st.lists(_RETRY_HEADERS, max_size=5), st.lists(st.one_of(text_values, header_values)))
@example([], [str(10**15)])  # a jump that far built a tuple of every skipped number
def test_sequence_numbers_of_any_value_are_judged_without_blowing_up(
    others: list[dict[str, HeaderValue]], numbers: list[HeaderValue]
) -> None:
    checker = SequenceChecker(max_missing=50)
    headers = [{envelope.SEQ: n, envelope.SEQ_SOURCE: "s"} for n in numbers] + others
    for h in headers:
        event = checker.observe(Message(_delivery(headers=h), None, None, _unsettled))
        assert len(event.missing) <= 50
    assert sum(checker.counts.values()) == len(headers)


@FUZZ
@given(st.dictionaries(header_names, header_values, max_size=8))
@example({"mqkit-foo": "x", "": "y", "Content-Type": "z"})  # another producer's names
def test_a_dead_letter_of_any_received_message_can_be_sent(
    headers: dict[str, HeaderValue],
) -> None:
    """Dead-lettering (and retry copies) re-send the received headers: names a producer may not
    send must not make that raise, which would stop the consumer."""
    message = Message(_delivery(headers=headers), None, None, _unsettled)
    envelope.check_headers(dead_letter_headers(message, "billing", ValueError("bad")))
    envelope.check_headers(envelope.copyable_headers(headers))


_fields = st.one_of(st.none(), st.just(""), st.text(max_size=10))


@pytest.fixture(scope="module")
def producer() -> Iterator[mqkit.Producer]:
    with mqkit.connect("memory://fuzz-copies") as broker:
        yield broker.producer(serializer="bytes")


def _decodable(value: HeaderValue) -> bool:
    """Whether a wire decoder can produce ``value``: they all decode text as strict UTF-8, so a
    lone surrogate never comes off the wire."""
    try:
        if isinstance(value, str):
            value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@FUZZ
@given(
    st.dictionaries(header_names, header_values.filter(_decodable), max_size=6),
    st.one_of(st.none(), st.text(max_size=10)),
    _fields,
    _fields,
    _fields,
    _fields,
)
@example({}, None, "", None, None, None)  # an empty content type (AMQP, a Kafka header)
def test_any_received_message_can_be_dead_lettered(
    producer: mqkit.Producer,
    headers: dict[str, HeaderValue],
    key: str | None,
    content_type: str | None,
    content_encoding: str | None,
    correlation_id: str | None,
    reply_to: str | None,
) -> None:
    delivery = _delivery(b"\xff", headers, content_type, content_encoding)
    delivery.key, delivery.correlation_id, delivery.reply_to = key, correlation_id, reply_to
    message = Message(delivery, None, DecodeError("bad"), _unsettled)
    send_dead_letter(producer, message, "billing", DecodeError("bad"))
