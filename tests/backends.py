"""Which backend URLs the conformance suite runs on.

Always the embedded ones; then, for each module in ``tests/brokers``, the URL in its ``ENV``
variable, or a container it starts when Docker is there. In CI (``CI=true``) every adapter's
variable must be set: a broker that is not configured fails the run instead of being skipped.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import tests.brokers


@dataclass(frozen=True)
class BackendSpec:
    name: str
    env: str | None
    module: ModuleType | None


def broker_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"tests.brokers.{info.name}")
        for info in pkgutil.iter_modules(tests.brokers.__path__)
    ]


def specs() -> list[BackendSpec]:
    out = [BackendSpec("memory", None, None), BackendSpec("sqlite", None, None)]
    for module in broker_modules():
        out.append(BackendSpec(module.__name__.rsplit(".", 1)[1], module.ENV, module))
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
