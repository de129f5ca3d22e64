"""Fixtures of the conformance suite, scoped to it: ``url`` (once per backend), ``topic``,
``group``. The backends come from :mod:`mqkit.testing.plugin`."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from mqkit.testing import stores
from mqkit.testing.plugin import Backend, configured_backends


def pytest_configure(config: pytest.Config) -> None:
    stores.REQUIRED = bool(config.getini("mqkit_require_services")) and bool(os.environ.get("CI"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking ``url`` runs once per configured backend, with its name as id."""
    if "url" not in metafunc.fixturenames:
        return
    backends = configured_backends(metafunc.config)
    metafunc.parametrize(
        "url",
        [pytest.param(b, id=b.name, marks=b.marks) for b in backends],
        indirect=True,
        scope="session",
    )


class _Opened:
    """The URLs of the backends started in this session, closed when it ends."""

    def __init__(self, stack: contextlib.ExitStack, tmp: pytest.TempPathFactory) -> None:
        self.stack, self.tmp, self.urls = stack, tmp, dict[str, str]()

    def url(self, backend: Backend) -> str:
        if isinstance(backend.url, str):
            return backend.url
        if backend.name not in self.urls:
            source = backend.url(self.tmp.mktemp(backend.name))
            self.urls[backend.name] = self.stack.enter_context(source)
        return self.urls[backend.name]


@pytest.fixture(scope="session")
def _mqkit_opened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Opened]:
    with contextlib.ExitStack() as stack:
        yield _Opened(stack, tmp_path_factory)


@pytest.fixture(scope="session")
def url(request: pytest.FixtureRequest, _mqkit_opened: _Opened) -> str:
    """A backend URL; the conformance suite runs once per configured backend."""
    backend: Backend = request.param
    return _mqkit_opened.url(backend)


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def group() -> str:
    return f"g-{uuid.uuid4().hex[:12]}"
