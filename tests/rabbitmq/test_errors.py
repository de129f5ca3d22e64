"""Bad credentials, wrong vhost, unreachable or mute hosts and bad options give one clear mqkit
error, quickly, never a hang or a raw pika traceback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pika
import pytest
from pika.exchange_type import ExchangeType

import mqkit
from mqkit import BrokerUnavailable, ConfigError, envelope
from mqkit.testing.util import silent_server
from tests.rabbitmq.conftest import Node, delete_group

LIMIT = 10.0


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def _connect_fails(url: str) -> tuple[BrokerUnavailable, float]:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        mqkit.connect(url, connect_timeout=3)
    return info.value, time.monotonic() - started


def test_bad_password_is_a_clear_error(rabbit_url: str) -> None:
    host, port = _host_port(rabbit_url)
    error, took = _connect_fails(f"amqp://guest:wrong-password@{host}:{port}/")
    assert took < LIMIT
    assert f"{host}:{port}" in str(error)
    assert "login refused" in str(error) and "password" in str(error)
    assert "wrong-password" not in str(error)


def test_unknown_user_is_a_clear_error(rabbit_url: str) -> None:
    host, port = _host_port(rabbit_url)
    error, took = _connect_fails(f"amqp://nobody-here:x@{host}:{port}/")
    assert took < LIMIT and "login refused" in str(error)


def test_wrong_vhost_is_a_clear_error(rabbit_url: str) -> None:
    host, port = _host_port(rabbit_url)
    error, took = _connect_fails(f"amqp://guest:guest@{host}:{port}/no-such-vhost")
    assert took < LIMIT
    assert "'no-such-vhost'" in str(error) and "virtual host" in str(error)


def test_closed_port_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    error, took = _connect_fails(f"amqp://guest:guest@127.0.0.1:{port}/")
    assert took < LIMIT
    assert f"127.0.0.1:{port}" in str(error) and "connection refused" in str(error)


@pytest.fixture
def mute_server() -> Iterator[int]:
    """Accepts TCP connections and never says a word (a hung broker, a wrong service)."""
    with silent_server() as port:
        yield port


def test_mute_server_times_out_with_a_clear_error(mute_server: int) -> None:
    error, took = _connect_fails(f"amqp://guest:guest@127.0.0.1:{mute_server}/")
    assert took < LIMIT
    assert f"127.0.0.1:{mute_server}" in str(error) and "no answer" in str(error)


def test_second_host_is_used_when_the_first_is_down(rabbit_url: str) -> None:
    host, port = _host_port(rabbit_url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    with mqkit.connect(f"amqp://guest:guest@127.0.0.1:{dead},{host}:{port}/") as broker:
        broker.producer().close()


def test_unknown_option_and_bad_values_are_config_errors(rabbit_url: str) -> None:
    with pytest.raises(ConfigError, match="prefetchh"):
        mqkit.connect(rabbit_url, prefetchh=3)
    with pytest.raises(ConfigError, match="partitions"):
        mqkit.connect(rabbit_url, partitions=65)
    with pytest.raises(ConfigError, match="ca_file"):
        mqkit.connect(rabbit_url, ca_file="/no/such/ca.pem")
    with pytest.raises(ConfigError, match="no host"):
        mqkit.connect("amqp:///vhost")
    with mqkit.connect(rabbit_url) as broker:
        with pytest.raises(ConfigError, match="max_bufer"):
            broker.producer(max_bufer=1)
        with pytest.raises(ConfigError, match="partitions=65"):
            broker.consumer("t", group="g", partitions=65)
        with pytest.raises(ConfigError, match="heartbeat"):  # a connection option, not per consumer
            broker.consumer("t", group="g", heartbeat=5)
        with pytest.raises(ConfigError, match="reserved by RabbitMQ"):
            broker.consumer("amq.mine", group="g")


def test_reserved_header_names_are_refused(
    rabbit_url: str, names: tuple[str, str], request: pytest.FixtureRequest
) -> None:
    """mqkit's own names (``mqkit-…``) are refused at send, before anything is queued; a user
    header that merely looks like metadata (``x-mqkit-key``) is an ordinary header."""
    topic, group = names
    with mqkit.connect(rabbit_url) as broker:
        consumer = broker.consumer(topic, group=group, partitions=1)
        request.addfinalizer(lambda: delete_group(rabbit_url, topic, group, 1))
        with broker.producer() as producer:
            for name in (envelope.KEY, envelope.TIMESTAMP, envelope.ID, "mqkit-anything"):
                with pytest.raises(ValueError, match=name):
                    producer.send(topic, 1, headers={name: "sneaky"})
            sent = producer.send(topic, 2, key="k", headers={"x-mqkit-key": "mine"})
        message = consumer.receive(timeout=10)
        assert message is not None
        assert (message.id, message.value, message.key) == (sent, 2, "k")
        assert dict(message.headers) == {"x-mqkit-key": "mine"}
        message.ack()


def test_exchange_of_another_type_is_used_as_it_is(rabbit_url: str, names: tuple[str, str]) -> None:
    """Someone else's fanout exchange (not durable, so also other flags) is neither redeclared
    nor an error: producers publish to it and groups bind to it."""
    topic, group = names
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url.split("?")[0]))
    try:
        conn.channel().exchange_declare(topic, exchange_type=ExchangeType("fanout"), durable=False)
        with mqkit.connect(rabbit_url) as broker:
            consumer = broker.consumer(topic, group=group, partitions=1)
            with broker.producer() as producer:
                sent = producer.send(topic, 1, key="k")
            message = consumer.receive(timeout=10)
            assert message is not None and (message.id, message.value) == (sent, 1)
            message.ack()
            consumer.close()
    finally:
        delete_group(rabbit_url, topic, group, 1)
        conn.channel().exchange_delete(topic)
        conn.close()


def test_direct_exchange_needs_binding_keys(rabbit_url: str, names: tuple[str, str]) -> None:
    topic, group = names
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url.split("?")[0]))
    try:
        conn.channel().exchange_declare(topic, exchange_type=ExchangeType("direct"), durable=True)
        with mqkit.connect(rabbit_url) as broker, pytest.raises(ConfigError, match="binding_keys="):
            broker.consumer(topic, group=group)
    finally:
        conn.channel().exchange_delete(topic)
        conn.close()


def test_existing_queue_that_is_missing_is_a_clear_error(
    rabbit_url: str, names: tuple[str, str]
) -> None:
    topic, group = names
    with mqkit.connect(rabbit_url) as broker:
        with pytest.raises(ConfigError, match="has no queue"):
            broker.consumer(topic, group=group, queue=f"{topic}-nowhere")
        with pytest.raises(ConfigError, match="one existing queue"):
            broker.consumer([topic, topic + "2"], group=group, queue=topic)


def test_missing_hash_exchange_plugin_is_a_clear_error(node: Node) -> None:
    """On a node without the plugin, a group cannot be set up: the error names the plugin and
    the command that enables it (on a private node: the shared broker is left alone)."""
    plugin = "rabbitmq_sharding"
    node.plugins("disable", plugin)
    try:
        with mqkit.connect(node.url + "?queue_expires=20") as broker:
            with pytest.raises(ConfigError, match=f"rabbitmq-plugins enable {plugin}"):
                broker.consumer("no-plugin", group="g", partitions=1)
            with broker.producer() as producer:  # producers do not need it
                producer.send("no-plugin", 1)
    finally:
        node.plugins("enable", plugin)


def test_only_a_brokers_internal_error_is_tried_again_while_setting_up() -> None:
    """541 INTERNAL_ERROR (RabbitMQ crashed handling a request, e.g. a consume on a quorum
    queue whose Raft server is not up yet) is retried; a refusal is not."""
    from mqkit_rabbitmq.consumer import _internal_error

    def raised(cause: BaseException) -> mqkit.BrokerUnavailable:
        try:
            raise mqkit.BrokerUnavailable("unavailable") from cause
        except mqkit.BrokerUnavailable as exc:
            return exc

    internal = pika.exceptions.ConnectionClosedByBroker(541, "INTERNAL_ERROR")
    refused = pika.exceptions.ConnectionClosedByBroker(403, "ACCESS_REFUSED")
    assert _internal_error(raised(internal))
    assert not _internal_error(raised(refused))
    assert not _internal_error(mqkit.BrokerUnavailable("no cause"))
