from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import MAIN_RUN, BackendSpec, backend_url, current_run, missing, specs

_SPECS = specs()
_handed: dict[str, int] = {}
_passed = 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "run(name): the test belongs to that test run, not the main one (tests/backends.py)",
    )


def _run_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("run")
    if marker is not None:
        return str(marker.args[0])
    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get("url") if callspec is not None else None
    return spec.run if isinstance(spec, BackendSpec) else MAIN_RUN


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests of this run; the others are deselected, each runs in its own run."""
    run = current_run()
    keep: list[pytest.Item] = []
    others: list[pytest.Item] = []
    for item in items:
        belongs = _run_of(item)
        if belongs == run:
            keep.append(item)
        else:
            others.append(item)
            _handed[belongs] = _handed.get(belongs, 0) + 1
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = keep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for run, count in sorted(_handed.items()):
        terminalreporter.write_line(
            f"{count} tests of the {run!r} run deselected here: "
            + (
                "scripts/test runs them in .venv (MQKIT_TEST_RUN unset)"
                if run == MAIN_RUN
                else f"scripts/test runs them in .venv-{run} with MQKIT_TEST_RUN={run}"
            )
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a separate run exists to test its backend: passing nothing is a failure."""
    run = current_run()
    if os.environ.get("CI") and run != MAIN_RUN and exitstatus == 0 and _passed == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_sep("=", f"CI: the {run!r} test run passed no test", red=True)


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
    """A backend URL for our own per-backend tests (``mqkit bench`` smoke test).

    The conformance suite has its own ``url`` (``mqkit/testing/conftest.py``), fed by
    ``tests.backends.conformance_backends``."""
    spec: BackendSpec = request.param
    if spec.name not in _urls:
        tmp = tmp_path_factory.mktemp(spec.name)
        _urls[spec.name] = _backend_stack.enter_context(backend_url(spec, tmp))
    value = _urls[spec.name]
    if value is None:
        pytest.skip(missing(spec))
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
