"""Failures give clear mqkit errors in bounded time: unreachable or silent endpoints, bad
credentials, unknown topics and groups, wrong topic types, missing or mismatched client libraries.

Unknown topics, topic types, names and options are shown on real Apache RocketMQ 5 (the CI
cluster, ``adapters/rocketmq/ci/broker``); unreachable and silent endpoints on plain loopback
sockets. Bad credentials need a proxy with ACLs, which the CI cluster does not run: that test
uses the RocketMQ 5 *test server* (``rocketmq_test_server.py``, a gRPC stand-in for a proxy, not
RocketMQ) and shows only that the adapter reports the proxy's UNAUTHORIZED answer clearly.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import pytest
from mqkit_rocketmq import admin

import mqkit
from mqkit import BrokerUnavailable, ConfigError
from mqkit.testing.util import closed_port, silent_server
from tests.rocketmq.conftest import Cluster, with_query
from tests.rocketmq.rocketmq_helpers import running_server

BOUND = 10.0  # seconds: the promise for every one of these errors
UPDATE_BROKER_CONFIG = 25  # RequestCode


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    with silent_server() as port:
        yield port


def test_unreachable_endpoint_is_broker_unavailable_naming_the_host() -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
        mqkit.connect(f"rocketmq://127.0.0.1:{port}")
    assert time.monotonic() - started < BOUND


def test_silent_endpoint_times_out_within_the_bound(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="cannot reach"):
        mqkit.connect(f"rocketmq://127.0.0.1:{silent_port}?connect_timeout=2")
    assert time.monotonic() - started < BOUND


def test_bad_credentials_are_refused_clearly(tmp_path: Path, topic: str, group: str) -> None:
    # On the test server (see the module docstring): the CI cluster runs without ACLs.
    with running_server(tmp_path, "--auto-create-topics", "--acl", "mqkit:s3cret") as server:
        host = f"127.0.0.1:{server.port}"
        for creds in ("mqkit:wrong@", "nobody:s3cret@", ""):
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="refused the credentials"):
                mqkit.connect(f"rocketmq://{creds}{host}")
            assert time.monotonic() - started < BOUND
        with mqkit.connect(f"rocketmq://mqkit:s3cret@{host}") as broker:
            consumer = broker.consumer(topic, group=group)
            with broker.producer() as producer:
                sent = producer.send(topic, "signed")
            message = consumer.receive(timeout=10)
            assert message is not None and message.id == sent
            message.ack()


def test_unknown_topic_is_a_config_error_saying_how_to_create_it(
    plain_url: str, namesrv: str, topic: str, group: str
) -> None:
    admin.ensure_topic(namesrv, topic)  # exists; "orders.unknown-…" does not
    unknown = f"orders.unknown-{group}"
    with mqkit.connect(plain_url) as broker:
        producer = broker.producer()
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"does not exist.*mqadmin updateTopic"):
            producer.send(unknown, 1)
        assert time.monotonic() - started < BOUND
        with pytest.raises(ConfigError, match=f"'{unknown.replace('.', '_')}'"):
            broker.consumer(unknown, group=group)
        producer.send(topic, "fine")  # the producer is still usable
        producer.close()


def test_unknown_group_on_a_broker_that_makes_none_is_a_config_error(
    private_cluster: Cluster,
) -> None:
    # Brokers make consumer groups on first use unless autoCreateSubscriptionGroup=false. On
    # such a broker (the private cluster, switched at runtime like `mqadmin updateBrokerConfig`)
    # a consumer of a group nobody created is refused when it subscribes, saying what to run.
    url = with_query(private_cluster.url, auto_create=None)
    namesrv = dict(parse_qsl(urlsplit(url).query))["namesrv"]
    admin.ensure_topic(namesrv, "orders")
    [address] = admin.master_brokers(namesrv).values()

    def auto_create_groups(on: bool) -> None:
        body = f"autoCreateSubscriptionGroup={str(on).lower()}\n".encode()
        reply, _ = admin.call(address, UPDATE_BROKER_CONFIG, body=body)
        assert reply["code"] == admin.SUCCESS, reply

    auto_create_groups(False)
    try:
        with mqkit.connect(url) as broker:
            missing = r"group 'billing' does not exist.*updateSubGroup"
            with pytest.raises(ConfigError, match=missing):
                broker.consumer("orders", group="billing")
            admin.ensure_group(namesrv, "billing")
            broker.consumer("orders", group="billing").close()  # created: fine
    finally:
        auto_create_groups(True)


def test_topic_that_refuses_fifo_messages_says_to_make_it_mixed(
    plain_url: str, namesrv: str, topic: str
) -> None:
    admin.ensure_topic(namesrv, topic, message_type="NORMAL")
    with mqkit.connect(plain_url) as broker, broker.producer() as producer:
        producer.send(topic, "no key is fine")
        producer.flush()
        with pytest.raises(ConfigError, match="MIXED"):
            producer.send(topic, "a key makes it FIFO", key="k")
            producer.flush()


def test_too_long_names_are_config_errors(rocketmq_url: str) -> None:
    with mqkit.connect(rocketmq_url) as broker, pytest.raises(ConfigError, match="at most 127"):
        broker.producer().send("t" * 150, 1)


def test_bad_options_are_config_errors(rocketmq_url: str) -> None:
    with pytest.raises(ConfigError, match="visibilty_timeout"):
        mqkit.connect(rocketmq_url + "&visibilty_timeout=3")
    with pytest.raises(ConfigError, match="prefetch"):
        mqkit.connect(rocketmq_url + "&prefetch=100")
    with pytest.raises(ConfigError, match="namesrv"):
        mqkit.connect(rocketmq_url.split("?")[0] + "?auto_create=true")


# -- client libraries -------------------------------------------------------------------------


def _connect_in(path: Path, url: str) -> subprocess.CompletedProcess[str]:
    """Connect in a child whose ``rocketmq`` package comes from ``path`` (a pip --target dir)."""
    code = (
        "import sys, time, mqkit\n"
        "t = time.monotonic()\n"
        "try:\n"
        f"    b = mqkit.connect({url!r})\n"
        "    p = b.producer()\n"
        "    p.send('t.x', 1)\n"
        "    print('OK')\n"
        "except mqkit.MqkitError as e:\n"
        "    print(type(e).__name__, round(time.monotonic() - t, 1), e)\n"
    )
    env = {"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin", "HOME": str(path)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )


def _pip_target(root: Path, requirement: str) -> Path:
    target = root / requirement.replace("==", "-")
    if not target.exists():
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                "--no-deps", "--no-build-isolation", "--target", str(target), requirement,
            ],
            check=True,
            timeout=300,
        )
    return target


def test_remoting_without_its_client_says_what_to_install() -> None:
    drivers = importlib.import_module("mqkit_rocketmq._drivers")
    assert "rocketmq-python-client" in drivers.installed_drivers()
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        mqkit.connect("rocketmq+remoting://127.0.0.1:9876")
    assert time.monotonic() - started < BOUND
    text = str(info.value)
    assert "pip install 'mqkit-rocketmq[remoting]'" in text
    assert "rocketmq-python-client" in text and "separate virtualenv" in text


def test_missing_native_library_names_how_to_install_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The real Apache binding, installed where the child finds it first; no librocketmq here.
    target = _pip_target(tmp_path_factory.mktemp("pip"), "rocketmq-client-python==2.0.0")
    done = _connect_in(target, "rocketmq+remoting://127.0.0.1:9876")
    assert done.stdout.startswith("ConfigError"), done.stdout + done.stderr
    seconds = float(done.stdout.split()[1])
    assert seconds < BOUND
    assert "librocketmq" in done.stdout and "rocketmq-client-cpp 2.0.0" in done.stdout
    assert "mqkit-rocketmq[remoting-bundled]" in done.stdout


def test_bundled_native_library_loads_and_fails_cleanly_on_connection_errors(
    tmp_path_factory: pytest.TempPathFactory, silent_port: int
) -> None:
    # The 4.x driver as far as it can be verified without a RocketMQ 4 name server: the wheel's
    # librocketmq loads, and unreachable or silent name servers are clear errors in bounds.
    target = _pip_target(tmp_path_factory.mktemp("pip"), "rocketmq==0.4.4")
    for port, cause in ((closed_port(), "refused"), (silent_port, "did not answer")):
        done = _connect_in(target, f"rocketmq+remoting://127.0.0.1:{port}?connect_timeout=3")
        assert done.stdout.startswith("BrokerUnavailable"), done.stdout + done.stderr
        assert float(done.stdout.split()[1]) < BOUND
        assert cause in done.stdout and f"127.0.0.1:{port}" in done.stdout



@pytest.mark.parametrize(
    "raised",
    [
        # The proxy's answer while a broker group has no primary (seen during a graceful stop
        # of the primary of adapters/rocketmq/ci/cluster, before the controller's failover).
        RuntimeError("code: 40300, ProxyException: no writable queue"),
        # The client's, picking a queue from a route that lists no writable one.
        ZeroDivisionError("integer modulo by zero"),
    ],
)
def test_no_writable_queue_is_broker_unavailable_not_a_permission_error(
    raised: Exception,
) -> None:
    from mqkit_rocketmq.backend import Backend

    where = SimpleNamespace(server="RocketMQ proxy at 127.0.0.1:8081")
    exc = Backend.error(where, raised, "sending to 'orders'", "orders")  # type: ignore[arg-type]
    assert type(exc) is BrokerUnavailable
    assert "no queue of topic 'orders' takes writes" in str(exc)
    assert "no primary" in str(exc)
