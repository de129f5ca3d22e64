"""Serializers turn values into bodies and back. JSON is the default."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from mqkit.errors import ConfigError


@runtime_checkable
class Serializer(Protocol):
    """Anything with ``dumps(value) -> bytes`` and ``loads(body) -> value``."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, body: bytes) -> Any: ...


class JsonSerializer:
    """Compact UTF-8 JSON; the default, readable from any language."""

    def dumps(self, value: Any) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(
                "the JSON serializer cannot send bytes; use serializer='bytes' for raw payloads"
            )
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, body: bytes) -> Any:
        return json.loads(body)


class BytesSerializer:
    """Raw bodies: send ``bytes``, receive ``bytes``."""

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

    def dumps(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"the text serializer sends str, not {type(value).__name__}")
        return value.encode()

    def loads(self, body: bytes) -> Any:
        return body.decode()


class FunctionSerializer:
    """Two functions as a serializer: ``FunctionSerializer(msgpack.packb, msgpack.unpackb)``."""

    def __init__(self, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any]) -> None:
        self._dumps = dumps
        self._loads = loads

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
