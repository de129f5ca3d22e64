"""Which backend URLs the conformance suite runs on.

Always the embedded ones; then, for each broker in :data:`BROKERS`, the URL in
``MQKIT_TEST_<NAME>_URL``. Brokers are started in one place, ``scripts/brokers start`` (it runs
each ``adapters/<name>/ci/broker`` and prints the ``export`` lines); with Docker,
``compose.yaml`` does the same (README, "Testing"). In CI (``CI=true``) every broker's
variable must be set: a broker that is not configured fails the run instead of being skipped.

The conformance suite (``mqkit.testing``) finds these backends through the ini option
``mqkit_backends = "tests.backends:conformance_backends"`` of the project's pytest
configuration, as a third-party adapter would name its own (or pass ``--mqkit-url``).

Test runs: a broker whose client library cannot share the project's virtualenv names the run
it belongs to in :data:`BROKERS` (``"remoting"``: the 4.x RocketMQ client installs a package
``rocketmq``, as does the 5.x client of the main environment). ``scripts/test`` runs pytest once
in ``.venv`` (the run ``main``) and once per such run in ``.venv-<run>`` with
``MQKIT_TEST_RUN=<run>``. Each run keeps the tests of its own backends and deselects the
others (``tests/conftest.py``), so every backend is tested in exactly one run.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqkit.testing.plugin import Backend

#: The run of the main virtualenv; other runs are named in :data:`BROKERS`.
MAIN_RUN = "main"

#: Every broker backend we test: name -> the test run it belongs to.
BROKERS: dict[str, str] = {
    "activemq": MAIN_RUN,
    "activemq_secure": MAIN_RUN,
    "kafka": MAIN_RUN,
    "rabbitmq": MAIN_RUN,
    "rabbitmq_secure": MAIN_RUN,
    "rocketmq": MAIN_RUN,
    # kafka:// on the SASL_SSL listener (SCRAM-SHA-512, test CA) as the ACL-limited mqkit-app.
    "kafka_secure": MAIN_RUN,
    # kafka:// with driver=confluent (librdkafka), on the SASL_SSL listener as mqkit-app.
    "kafka_confluent": MAIN_RUN,
    # rocketmq:// with TLS as mqkit-app on the ACL 2.0 cluster (adapters/rocketmq/ci/broker).
    "rocketmq_secure": MAIN_RUN,
    # rocketmq+remoting://, the name server of the rocketmq cluster (librocketmq client).
    "rocketmq_remoting": "remoting",
}


def env_var(name: str) -> str:
    """The variable holding broker ``name``'s test URL, e.g. ``MQKIT_TEST_KAFKA_URL``."""
    return f"MQKIT_TEST_{name.upper()}_URL"


def current_run() -> str:
    """The test run this pytest belongs to (``MQKIT_TEST_RUN``, ``main`` when unset)."""
    return os.environ.get("MQKIT_TEST_RUN", "").strip() or MAIN_RUN


@dataclass(frozen=True)
class BackendSpec:
    name: str
    env: str | None
    run: str = MAIN_RUN


def specs() -> list[BackendSpec]:
    out = [BackendSpec("memory", None), BackendSpec("sqlite", None)]
    out.extend(BackendSpec(name, env_var(name), run) for name, run in BROKERS.items())
    extra = os.environ.get("MQKIT_TEST_URLS", "").split()
    out.extend(BackendSpec(f"extra{i}", None) for i in range(len(extra)))
    return out


def missing(spec: BackendSpec) -> str:
    """Why ``spec`` is not tested here, and what to do about it (one line)."""
    return f"{spec.name}: {spec.env} is not set; `scripts/brokers start` starts it and prints it"


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
        raise RuntimeError(f"CI: {missing(spec)} (scripts/test does so before the tests)")
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
            pytest.skip(missing(spec))
        yield url
