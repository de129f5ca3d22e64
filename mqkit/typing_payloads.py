"""Typed payloads: what the JSON serializer writes for Python types JSON lacks, and how a
received value becomes a dataclass or a pydantic model again.

The encoding is the one other languages read without help:

=====================  ===========================================================
Python                 JSON
=====================  ===========================================================
dataclass instance     object of its fields (nested values encoded by these rules)
pydantic model         ``model_dump(mode="json")`` (pydantic's own JSON rules)
``datetime``/``date``  ISO 8601 string (``2026-01-31T12:00:00+00:00``)
``time``               ISO 8601 string (``12:00:00``)
``Decimal``            string (``"12.50"``: no binary rounding)
``UUID``               canonical string
``Enum``               its value
``set``/``frozenset``  array
=====================  ===========================================================

NaN and infinities are refused (``JsonSerializer(allow_nan=True)`` writes them as JavaScript
does, which strict JSON parsers reject).

Decoding into a dataclass needs no dependency: fields are checked against their annotations
(``int``, ``float``, ``str``, ``bool``, the types above, nested dataclasses, ``list[T]``,
``tuple[T, ...]``, ``dict[str, T]``, ``T | None``, ``Literal``, ``Any``); unknown keys are
refused, missing fields take their defaults. Pydantic models use ``model_validate``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from mqkit.errors import ConfigError

T = TypeVar("T")


def json_default(value: Any) -> Any:
    """``json.dumps(default=…)``: the encoding of the table above; ``TypeError`` otherwise."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if dump is not None and _is_pydantic_model(type(value)):
        return dump(mode="json")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"Decimal {value} is not a number JSON can carry")
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(
        f"{type(value).__name__} is not JSON: send a dict, list, str, number, bool, None, "
        "dataclass, pydantic model, datetime, Decimal, UUID or Enum"
    )


def _is_pydantic_model(cls: type) -> bool:
    return any(
        base.__name__ == "BaseModel" and base.__module__.startswith("pydantic")
        for base in cls.__mro__
    )


def check_model(model: Any) -> type[Any]:
    """``model`` if it is a dataclass or a pydantic model class; a ``ConfigError`` if not."""
    if isinstance(model, type) and (dataclasses.is_dataclass(model) or _is_pydantic_model(model)):
        return model
    raise ConfigError(f"model must be a dataclass or a pydantic model class, not {model!r}")


def to_model(model: type[T], value: Any) -> T:
    """``value`` (decoded JSON) validated into ``model``; ``ValueError``/``TypeError`` (or
    pydantic's ``ValidationError``, a ``ValueError``) when it does not fit."""
    if _is_pydantic_model(model):
        result: T = model.model_validate(value)  # type: ignore[attr-defined]
        return result
    return typing.cast(T, _convert(model, value, model.__name__))


def _dataclass(cls: type[Any], value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise TypeError(f"{where}: expected an object for {cls.__name__}, got {_kind(value)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(value) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints.get(name, Any), value[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: missing field {name!r}")
    return cls(**kwargs)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _convert(tp: Any, value: Any, where: str) -> Any:
    if tp is Any or tp is object:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        errors = []
        for option in get_args(tp):
            try:
                return _convert(option, value, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: {_kind(value)} fits none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ValueError(f"{where}: {value!r} is not one of {get_args(tp)}")
    if origin in (list, set, frozenset) or origin is typing.Sequence:
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected an array, got {_kind(value)}")
        (item,) = get_args(tp) or (Any,)
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return (origin if origin in (set, frozenset) else list)(items)
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected an array, got {_kind(value)}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(
            _convert(a, v, f"{where}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict or origin is typing.Mapping:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {_kind(value)}")
        _, item = get_args(tp) or (str, Any)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is None or tp is type(None):
        if value is None:
            return None
        raise TypeError(f"{where}: expected null, got {_kind(value)}")
    if not isinstance(tp, type):
        return value  # an annotation this validator does not know: passed as it is
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where)
    if _is_pydantic_model(tp):
        return tp.model_validate(value)  # type: ignore[attr-defined]
    if issubclass(tp, enum.Enum):
        return tp(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp in (dt.datetime, dt.date, dt.time):
        if isinstance(value, str):
            return tp.fromisoformat(value)
    elif tp is Decimal:
        if isinstance(value, str | int) and not isinstance(value, bool):
            try:
                return Decimal(value)
            except InvalidOperation:
                raise ValueError(f"{where}: {value!r} is not a decimal number") from None
    elif tp is uuid.UUID:
        if isinstance(value, str):
            return uuid.UUID(value)
    elif tp in (list, dict):
        if isinstance(value, tp):
            return value
    elif isinstance(value, tp):
        return value
    raise TypeError(f"{where}: expected {tp.__name__}, got {_kind(value)}")
