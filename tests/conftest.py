from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import BackendSpec, backend_url, specs

_SPECS = specs()


@pytest.fixture(scope="session")
def _backend_stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


_urls: dict[str, str | None] = {}


@pytest.fixture(scope="session", params=_SPECS, ids=[s.name for s in _SPECS])
def url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _backend_stack: contextlib.ExitStack,
) -> str:
    """A backend URL; the conformance suite runs once per configured backend."""
    spec: BackendSpec = request.param
    if spec.name not in _urls:
        tmp = tmp_path_factory.mktemp(spec.name)
        _urls[spec.name] = _backend_stack.enter_context(backend_url(spec, tmp))
    value = _urls[spec.name]
    if value is None:
        pytest.skip(f"{spec.name}: set {spec.env} to run the suite against that broker")
    return value


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def group() -> str:
    return f"g-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tmp_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'q.db'}"
