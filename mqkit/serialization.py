"""Serializers turn values into bodies and back. JSON is the default.

A serializer may name the MIME type it writes (``content_type``); producers put it on every
message, so other clients know what the body is. On receipt the content type is honoured
(:func:`for_content_type`): a text or JSON or binary message decodes as such whatever the
consumer's serializer, unless that serializer is ``bytes`` (raw bodies, always).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from mqkit.errors import ConfigError
from mqkit.typing_payloads import json_default


@runtime_checkable
class Serializer(Protocol):
    """Anything with ``dumps(value) -> bytes`` and ``loads(body) -> value``."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, body: bytes) -> Any: ...


JSON = "application/json"
BINARY = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"


class JsonSerializer:
    """Compact UTF-8 JSON; the default, readable from any language.

    Dataclasses, pydantic models, ``datetime``, ``Decimal``, ``UUID`` and ``Enum`` values are
    encoded as :mod:`mqkit.typing_payloads` documents. NaN and infinities are refused (strict
    JSON parsers of other languages reject them) unless ``allow_nan=True``.
    """

    content_type = JSON

    def __init__(self, *, allow_nan: bool = False) -> None:
        self.allow_nan = allow_nan

    def dumps(self, value: Any) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(
                "the JSON serializer cannot send bytes; use serializer='bytes' for raw payloads"
            )
        try:
            text = json.dumps(
                value,
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=self.allow_nan,
                default=json_default,
            )
        except ValueError as exc:
            if "JSON compliant" in str(exc):
                raise ValueError(
                    "NaN and Infinity are not JSON other languages read; send null or a "
                    "string, or use JsonSerializer(allow_nan=True)"
                ) from exc
            raise
        return text.encode()

    def loads(self, body: bytes) -> Any:
        return json.loads(body)


class BytesSerializer:
    """Raw bodies: send ``bytes``, receive ``bytes``."""

    content_type = BINARY

    def dumps(self, value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        raise TypeError(f"the bytes serializer sends bytes, not {type(value).__name__}")

    def loads(self, body: bytes) -> Any:
        return body


class TextSerializer:
    """UTF-8 text."""

    content_type = TEXT

    def dumps(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"the text serializer sends str, not {type(value).__name__}")
        return value.encode()

    def loads(self, body: bytes) -> Any:
        return body.decode()


class FunctionSerializer:
    """Two functions as a serializer: ``FunctionSerializer(msgpack.packb, msgpack.unpackb)``."""

    def __init__(
        self,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
        content_type: str | None = None,
    ) -> None:
        self._dumps = dumps
        self._loads = loads
        self.content_type = content_type

    def dumps(self, value: Any) -> bytes:
        return self._dumps(value)

    def loads(self, body: bytes) -> Any:
        return self._loads(body)


_BUILTIN: dict[str, Serializer] = {
    "json": JsonSerializer(),
    "bytes": BytesSerializer(),
    "text": TextSerializer(),
}


def get_serializer(spec: str | Serializer | None) -> Serializer:
    """Accept a name (``json``, ``bytes``, ``text``) or any object with dumps/loads."""
    if spec is None:
        return _BUILTIN["json"]
    if isinstance(spec, str):
        try:
            return _BUILTIN[spec.lower()]
        except KeyError:
            raise ConfigError(
                f"unknown serializer {spec!r}; use one of {', '.join(_BUILTIN)} "
                "or pass an object with dumps()/loads()"
            ) from None
    if isinstance(spec, Serializer):
        return spec
    raise ConfigError(f"serializer {spec!r} has no dumps()/loads() methods")


def content_type_of(serializer: Serializer) -> str | None:
    """The MIME type ``serializer`` writes, if it names one."""
    value = getattr(serializer, "content_type", None)
    return value if isinstance(value, str) else None


def for_content_type(serializer: Serializer, content_type: str | None) -> Serializer:
    """The serializer that decodes a body of ``content_type`` for a consumer using
    ``serializer``: a built-in one when the type is JSON, text or binary and differs from what
    ``serializer`` writes; ``serializer`` otherwise (no type, an unknown type, or ``bytes``)."""
    if not content_type or isinstance(serializer, BytesSerializer):
        return serializer
    mime = content_type.split(";", 1)[0].strip().lower()
    own = content_type_of(serializer)
    if own is not None and own.split(";", 1)[0].strip().lower() == mime:
        return serializer
    if mime == JSON or mime.endswith("+json"):
        return _BUILTIN["json"]
    if mime.startswith("text/"):
        return _BUILTIN["text"]
    if mime == BINARY:
        return _BUILTIN["bytes"]
    return serializer


def decode_content(body: bytes, content_encoding: str | None) -> bytes:
    """``body`` without its ``gzip``/``deflate`` content encoding; other encodings (``utf-8``,
    ``identity``, which some clients put there) leave it as it is."""
    if not content_encoding:
        return body
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body
