"""The pytest plugin of the conformance suite: which backends it runs on.

Registered through the ``pytest11`` entry point, so the options exist before pytest collects
``--pyargs mqkit.testing`` from an installed package (a ``conftest.py`` there is loaded too late
to add command-line options). It only declares options; the fixtures live in the suite's own
``conftest.py`` and so apply to the suite alone, not to the tests of the project running it.

Backends come from, in order:

- ``--mqkit-url=URL`` (repeatable; ``--mqkit-url=NAME=URL`` names the test id, otherwise the
  URL's scheme does: ``test_round_trip[nats]``);
- the ini option ``mqkit_backends = "package.module:function"``: ``function(config)`` returns
  :class:`Backend` objects, for a project that starts its brokers itself or knows several.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: A URL, or a context manager factory given a fresh temporary directory that yields one
#: (started once per session, on first use, and closed at its end).
UrlSource = str | Callable[[Path], AbstractContextManager[str]]

_NAMED = re.compile(r"^([A-Za-z0-9_.+-]+)=(.+)$")


@dataclass(frozen=True)
class Backend:
    """One backend the suite runs on: ``name`` is the test id, ``marks`` go on its tests."""

    name: str
    url: UrlSource = field(compare=False)
    marks: tuple[pytest.MarkDecorator, ...] = field(default=(), compare=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mqkit", "mqkit conformance suite")
    group.addoption(
        "--mqkit-url",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="Backend URL to run the suite (pytest --pyargs mqkit.testing) on; repeatable. "
        "The test id is NAME, else the URL's scheme.",
    )
    parser.addini(
        "mqkit_backends",
        "module:function returning the backends of the suite when no --mqkit-url is given",
        default="",
    )
    parser.addini(
        "mqkit_require_services",
        "In CI (CI set), fail instead of skipping the Redis/PostgreSQL store tests whose "
        "MQKIT_TEST_REDIS_URL / MQKIT_TEST_POSTGRES_DSN is unset",
        type="bool",
        default=False,
    )


def backends_from_urls(values: Iterable[str]) -> list[Backend]:
    """``--mqkit-url`` values as backends, each named by its NAME= prefix or its scheme."""
    out: list[Backend] = []
    taken: set[str] = set()
    for value in values:
        named = _NAMED.match(value)
        if named and "://" not in named.group(1):
            name, url = named.group(1), named.group(2)
        else:
            name, url = value.split("://", 1)[0] if "://" in value else value, value
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}{n}"
        taken.add(name)
        out.append(Backend(name, url))
    return out


def configured_backends(config: pytest.Config) -> list[Backend]:
    """The backends of this session; a usage error when none is configured."""
    urls: list[str] = config.getoption("mqkit_url") or []
    if urls:
        return backends_from_urls(urls)
    spec = str(config.getini("mqkit_backends")).strip()
    if spec:
        module, _, attr = spec.partition(":")
        factory: Callable[[pytest.Config], Iterable[Any]] = getattr(
            importlib.import_module(module), attr
        )
        found = list(factory(config))
        if not all(isinstance(b, Backend) for b in found):
            raise pytest.UsageError(f"mqkit_backends = {spec!r} must return Backend objects")
        return found
    raise pytest.UsageError(
        "the mqkit conformance suite needs a backend: "
        "pytest --pyargs mqkit.testing --mqkit-url=scheme://host:port (repeatable)"
    )
