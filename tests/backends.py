"""Which backend URLs the conformance suite runs on.

Always the embedded ones; then, for each module in ``tests/brokers``, the URL in its ``ENV``
variable, or a container it starts when Docker is there. In CI (``CI=true``) every adapter's
variable must be set: a broker that is not configured fails the run instead of being skipped.

The conformance suite (``mqkit.testing``) finds these backends through the ini option
``mqkit_backends = "tests.backends:conformance_backends"`` of the project's pytest
configuration, as a third-party adapter would name its own (or pass ``--mqkit-url``).

Test runs: a broker module whose client library cannot share the project's virtualenv names
the run it belongs to in ``RUN`` (e.g. ``"remoting"``: the 4.x RocketMQ client installs a
package ``rocketmq``, as does the 5.x client of the main environment). ``scripts/test`` runs
pytest once in ``.venv`` (the run ``main``) and once per such run in ``.venv-<run>`` with
``MQKIT_TEST_RUN=<run>``. Each run keeps the tests of its own backends and deselects the
others (``tests/conftest.py``), so every backend is tested in exactly one run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pkgutil
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import tests.brokers
from mqkit.testing.plugin import Backend

#: The run of the main virtualenv; other runs are named by the broker modules' ``RUN``.
MAIN_RUN = "main"


def current_run() -> str:
    """The test run this pytest belongs to (``MQKIT_TEST_RUN``, ``main`` when unset)."""
    return os.environ.get("MQKIT_TEST_RUN", "").strip() or MAIN_RUN


@dataclass(frozen=True)
class BackendSpec:
    name: str
    env: str | None
    module: ModuleType | None
    run: str = MAIN_RUN


def broker_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"tests.brokers.{info.name}")
        for info in pkgutil.iter_modules(tests.brokers.__path__)
    ]


def specs() -> list[BackendSpec]:
    out = [BackendSpec("memory", None, None), BackendSpec("sqlite", None, None)]
    for module in broker_modules():
        name = module.__name__.rsplit(".", 1)[1]
        out.append(BackendSpec(name, module.ENV, module, getattr(module, "RUN", MAIN_RUN)))
    extra = os.environ.get("MQKIT_TEST_URLS", "").split()
    out.extend(BackendSpec(f"extra{i}", None, None) for i in range(len(extra)))
    return out


def docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


@contextlib.contextmanager
def backend_url(spec: BackendSpec, tmp: Path) -> Iterator[str | None]:
    """Yield the URL to test ``spec`` on, or ``None`` when it is not configured here."""
    if spec.name == "memory":
        yield "memory://conformance?visibility_timeout=5"
    elif spec.name == "sqlite":
        yield f"sqlite:///{tmp / 'conformance.db'}?visibility_timeout=5&poll_interval=0.01"
    elif spec.name.startswith("extra"):
        yield os.environ["MQKIT_TEST_URLS"].split()[int(spec.name[5:])]
    elif spec.env and os.environ.get(spec.env):
        yield os.environ[spec.env]
    elif os.environ.get("CI"):
        raise RuntimeError(
            f"{spec.env} is not set in CI: scripts/brokers must start the {spec.name} broker"
        )
    elif spec.module is not None and hasattr(spec.module, "container") and docker_available():
        with spec.module.container() as url:
            yield url
    else:
        yield None


def conformance_backends(config: pytest.Config) -> list[Backend]:
    """The suite's backends in this test run (the others belong to another run), each marked
    with its run for ``tests/conftest.py``."""
    run = current_run()
    return [
        Backend(
            spec.name,
            functools.partial(_required_url, spec),
            marks=(pytest.mark.run(spec.run),) if spec.run != MAIN_RUN else (),
        )
        for spec in specs()
        if spec.run == run
    ]


@contextlib.contextmanager
def _required_url(spec: BackendSpec, tmp: Path) -> Iterator[str]:
    with backend_url(spec, tmp) as url:
        if url is None:
            pytest.skip(f"{spec.name}: set {spec.env} to run the suite against that broker")
        yield url
