"""Fixtures for the RocketMQ adapter's own tests, against real Apache RocketMQ 5: the CI cluster
(``adapters/rocketmq/ci/broker start`` prints its URL), variants of its URL, and a private
cluster of the same release, started by the same script in a temporary state directory, that a
test may stop and start again."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.backends import env_var

ENV = env_var("rocketmq")

ROOT = Path(__file__).resolve().parents[2]
BROKER_SCRIPT = ROOT / "adapters" / "rocketmq" / "ci" / "broker"


def with_query(url: str, **changes: str | None) -> str:
    """``url`` with query options set (a value) or removed (``None``)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return parts._replace(query=urlencode(query, safe=":")).geturl()


def endpoint(url: str) -> str:
    """The proxy's host:port in a ``rocketmq://`` URL."""
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


@pytest.fixture(scope="session")
def rocketmq_url() -> str:
    """The CI cluster's URL: auto_create=true, namesrv=…, visibility_timeout=10."""
    url = os.environ.get(ENV, "")
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{ENV} is not set in CI: adapters/rocketmq/ci/broker start must run first")
        pytest.skip(f"set {ENV} (adapters/rocketmq/ci/broker start prints it)")
    if "namesrv" not in dict(parse_qsl(urlsplit(url).query)):
        pytest.fail(f"{ENV}={url}: the RocketMQ tests need namesrv=HOST:PORT in the URL")
    return url


@pytest.fixture(scope="session")
def namesrv(rocketmq_url: str) -> str:
    return dict(parse_qsl(urlsplit(rocketmq_url).query))["namesrv"]


@pytest.fixture(scope="session")
def plain_url(rocketmq_url: str) -> str:
    """The CI cluster without auto_create: topics and groups are what the cluster has."""
    return with_query(rocketmq_url, auto_create=None)


class Cluster:
    """A RocketMQ cluster of our own (name server, broker and proxy JVMs) on free ports, its
    configuration, store and logs in ``state``; ``stop()`` keeps the store, ``start()`` comes
    back on the same ports."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.url = ""

    def _run(self, action: str) -> str:
        env = {
            **os.environ,
            "MQKIT_ROCKETMQ_STATE": str(self.state),
            "MQKIT_ROCKETMQ_HEAP": "384m",
            # One cluster is all these tests need: no second one with ACL.
            "MQKIT_ROCKETMQ_SECURE": "0",
        }
        done = subprocess.run(
            ["bash", str(BROKER_SCRIPT), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ci/broker {action} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def start(self) -> None:
        for line in self._run("start").splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if name == ENV:
                url = value.strip("'")
                if self.url and url != self.url:
                    raise RuntimeError(f"the cluster came back at {url}, not {self.url}")
                self.url = url
        if not self.url:
            raise RuntimeError(f"ci/broker start printed no {ENV}")

    def stop(self) -> None:
        self._run("stop")

    def reset(self) -> None:
        self._run("reset")


@pytest.fixture(scope="session")
def private_cluster(
    rocketmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A second cluster, for tests that restart RocketMQ or change broker settings (never the
    shared one). Started once per session; tests leave it running with its defaults."""
    cluster = Cluster(tmp_path_factory.mktemp("rocketmq-private"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.reset()  # stops it and deletes its store
