"""Typed reading of backend options, which arrive as URL query strings or Python values.

Adapters read every option they know through :class:`Options` and call :meth:`Options.done`, so
a misspelt option is a :class:`~mqkit.errors.ConfigError` instead of being silently ignored.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from mqkit.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Options:
    def __init__(self, where: str, values: Mapping[str, Any]) -> None:
        self._where = where
        self._values = dict(values)
        self._read: set[str] = set()

    def _raw(self, name: str) -> Any:
        self._read.add(name)
        return self._values.get(name)

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        value = self._raw(name)
        return default if value is None else str(value)

    def float(
        self, name: builtins.str, default: builtins.float, *, minimum: builtins.float = 0.0
    ) -> builtins.float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self._where}: option {name}={value!r} is not a number") from None
        if number < minimum:
            raise ConfigError(f"{self._where}: option {name}={value!r} must be >= {minimum}")
        return number

    def int(
        self, name: builtins.str, default: builtins.int, *, minimum: builtins.int = 0
    ) -> builtins.int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self._where}: option {name}={value!r} is not an integer") from None
        if number < minimum:
            raise ConfigError(f"{self._where}: option {name}={value!r} must be >= {minimum}")
        return number

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{self._where}: option {name}={value!r} is not true/false")

    def choice(
        self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]
    ) -> builtins.str:
        value = self.str(name, default).lower()
        if value not in choices:
            raise ConfigError(
                f"{self._where}: option {name}={value!r} must be one of {', '.join(choices)}"
            )
        return value

    def done(self) -> None:
        """Raise for any option nobody read: it is a typo or belongs to another backend."""
        unknown = sorted(set(self._values) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise ConfigError(
                f"{self._where}: unknown option(s) {', '.join(unknown)}; known options: {known}"
            )
