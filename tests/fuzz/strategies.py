"""Hypothesis strategies for hostile wire input: what a producer that is not mqkit (or one that
means harm) can put in a body, a header name or a header value."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st

from mqkit import envelope
from mqkit.envelope import HeaderValue

# Modest budgets: the machine running the suite is shared, the module must stay well under a
# minute. Raise max_examples locally for a longer hunt.
FUZZ = settings(max_examples=300, deadline=None)

#: Every name mqkit reads back from the wire, so garbage lands where a parser looks for it.
MQKIT_NAMES = sorted(
    envelope.TRANSPORT_FIELDS
    | envelope.HELPER_FIELDS
    | envelope.STANDARD_FIELDS
    | {envelope.ESCAPED_PREFIX + "type", "mqkit-headers", "mqkit-header-names", "mqkit-empty"}
)

#: Texts that break naive number, time and JSON parsing.
NASTY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "-1",
        "-99999999999",
        "0",
        "1e999",
        "-1e999",
        "nan",
        "NaN",
        "inf",
        "-Infinity",
        "9" * 400,
        "9" * 5000,
        "0x10",
        "1_000",
        "\uff11\uff12",  # fullwidth digits: int() takes them
        "{",
        "[]",
        "{}",
        '{"a": "bytes"}',
        '{"a": 1}',
        "null",
        "true",
        '"quoted"',
        "[" * 3000,
        "\x00",
        "\ud800",
        "AAAA====",
    ]
)

text_values = st.one_of(NASTY_TEXT, st.text(max_size=40), st.integers().map(str))
header_names = st.one_of(st.sampled_from(MQKIT_NAMES), st.text(max_size=20))
#: Header values of mqkit's own types.
header_values: st.SearchStrategy[HeaderValue] = st.one_of(
    text_values,
    st.binary(max_size=40),
    st.integers(),
    st.floats(),
    st.booleans(),
)
#: Text headers of a text-only transport (STOMP, RocketMQ properties).
text_headers = st.dictionaries(header_names, text_values, max_size=12)
bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"[" * 5000, b"\xff\xfe", b'{"a": NaN}', b"\x1f\x8b\x08\x00"]),
)
content_types = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.sampled_from(
        [
            "application/json",
            "application/JSON; charset=latin-1",
            "application/vnd.x+json",
            "text/plain; charset=utf-16",
            "text/",
            "application/octet-stream",
            ";",
        ]
    ),
)
content_encodings = st.one_of(
    st.none(), st.text(max_size=10), st.sampled_from(["gzip", "x-gzip", "deflate", "identity"])
)
