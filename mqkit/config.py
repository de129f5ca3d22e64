"""Where the broker URL comes from, and what it says.

Resolution order: the ``url`` argument, env ``MQKIT_URL``, ``mqkit.toml`` in the working
directory, ``[tool.mqkit]`` in ``pyproject.toml`` there, then the embedded default.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from mqkit.errors import ConfigError

ENV_VAR = "MQKIT_URL"
DEFAULT_URL = "sqlite:///.mqkit/mqkit.db"
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """A parsed broker URL. ``hosts`` keeps every ``host:port`` of a multi-host URL."""

    raw: str
    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    username: str | None = None
    password: str | None = None
    path: str = ""
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str | None:
        return self.hosts[0][0] if self.hosts else None

    @property
    def port(self) -> int | None:
        return self.hosts[0][1] if self.hosts else None

    def redacted(self) -> str:
        """The URL with its password hidden, for logs and error messages."""
        if self.password is None:
            return self.raw
        return self.raw.replace(f":{quote(self.password, safe='')}@", ":***@", 1).replace(
            f":{self.password}@", ":***@", 1
        )

    def __str__(self) -> str:
        return self.redacted()


def parse_url(url: str) -> BrokerURL:
    """Parse ``scheme://[user[:password]@]host[:port][,host[:port]…][/path][?k=v&…]``."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("broker URL is empty; expected e.g. 'sqlite:///mqkit.db' or 'memory://'")
    url = url.strip()
    if "://" not in url:
        raise ConfigError(
            f"broker URL {url!r} has no scheme; write it as scheme://…, "
            "e.g. 'kafka://127.0.0.1:9092', 'amqp://guest:guest@127.0.0.1:5672/' or 'memory://'"
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if not _SCHEME.match(scheme):
        raise ConfigError(f"broker URL {url!r}: {scheme!r} is not a valid URL scheme")
    parts = urlsplit("x://" + rest)
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        user, sep, pw = creds.partition(":")
        username = unquote(user)
        password = unquote(pw) if sep else None
    hosts: list[tuple[str, int | None]] = []
    for item in filter(None, netloc.split(",")):
        hosts.append(_parse_host(url, item))
    try:
        params = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    except ValueError as exc:  # pragma: no cover - parse_qsl is lenient
        raise ConfigError(f"broker URL {url!r}: bad query string ({exc})") from None
    return BrokerURL(
        raw=url,
        scheme=scheme,
        hosts=tuple(hosts),
        username=username,
        password=password,
        path=unquote(parts.path),
        params=params,
    )


def _parse_host(url: str, item: str) -> tuple[str, int | None]:
    if item.startswith("["):  # IPv6 literal
        host, _, tail = item[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigError(f"broker URL {url!r}: empty host in {item!r}")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"broker URL {url!r}: port {port_text!r} of {host!r} is not a number in 1-65535"
        )
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class Settings:
    """The resolved URL, its options and where they came from (shown by ``mqkit info``)."""

    url: str
    options: Mapping[str, Any]
    source: str


def resolve(url: str | None = None, cwd: Path | None = None) -> Settings:
    """Find the broker URL: argument, env, config file, then the embedded default."""
    if url is not None:
        return Settings(url, {}, "argument")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Settings(env, {}, f"env {ENV_VAR}")
    here = cwd or Path.cwd()
    toml_file = here / "mqkit.toml"
    if toml_file.is_file():
        return _from_table(_load_toml(toml_file), str(toml_file))
    pyproject = here / "pyproject.toml"
    if pyproject.is_file():
        table = _load_toml(pyproject).get("tool", {}).get("mqkit")
        if isinstance(table, dict):
            return _from_table(table, f"{pyproject} [tool.mqkit]")
    return Settings(DEFAULT_URL, {}, "embedded default")


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or remove it") from None


def _from_table(table: Mapping[str, Any], source: str) -> Settings:
    url = table.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{source}: missing 'url = \"scheme://…\"'")
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: 'options' must be a table of settings")
    return Settings(url, options, source)
