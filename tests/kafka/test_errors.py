"""Clear mqkit errors in bounded time: unreachable brokers, bad URLs and options."""

from __future__ import annotations

import time

import pytest

import mqkit
from mqkit import BrokerUnavailable, ConfigError
from mqkit.testing.util import closed_port as free_port


def test_unreachable_bootstrap_is_broker_unavailable_within_10_s() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        mqkit.connect(f"kafka://127.0.0.1:{port}?connect_timeout=3")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "refused" in message


def test_default_timeout_is_also_bounded() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        mqkit.connect(f"kafka://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 10


def test_unknown_host_is_broker_unavailable() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"no-such-host\.invalid"):
        mqkit.connect("kafka://no-such-host.invalid:9092?connect_timeout=2")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("kafka://", "no broker"),
        ("kafka://127.0.0.1:9092/some/path", "no path"),
        ("kafka://127.0.0.1:9092?partitons=3", "unknown option"),
        ("kafka://127.0.0.1:9092?partitions=0", "partitions"),
        ("kafka://127.0.0.1:9092?offset_reset=middle", "offset_reset"),
        ("kafka://127.0.0.1:9092?session_timeout=1&heartbeat_interval=2", "heartbeat_interval"),
        ("kafka://127.0.0.1:9092?ack_commit=never", "ack_commit"),
        ("kafka://127.0.0.1:9092?heartbeat_interval=7", "heartbeat_interval"),  # session: 6 s
        ("kafka://127.0.0.1:9092?delivery_timeout=10&linger_ms=5", "delivery_timeout"),
    ],
)
def test_bad_urls_and_options_are_config_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        mqkit.connect(url)


def test_bad_consumer_and_producer_options(kafka_url: str, topic: str, group: str) -> None:
    with mqkit.connect(kafka_url) as broker:
        with pytest.raises(ConfigError, match="prefetsh"):
            broker.consumer(topic, group=group, prefetsh=3)
        with pytest.raises(ConfigError, match="lingr_ms"):
            broker.producer(lingr_ms=3)
        # options of the other side, or of the connection, are not set per producer/consumer
        with pytest.raises(ConfigError, match="prefetch is not set per producer"):
            broker.producer(prefetch=3)
        with pytest.raises(ConfigError, match="linger_ms is not set per consumer"):
            broker.consumer(topic, group=group, linger_ms=3)
        with pytest.raises(ConfigError, match="partitions is not set per consumer"):
            broker.consumer(topic, group=group, partitions=3)
        # and combinations are checked with the overrides applied
        with pytest.raises(ConfigError, match="heartbeat_interval must be below"):
            broker.consumer(topic, group=group, session_timeout=6, heartbeat_interval=6)
        with pytest.raises(ConfigError, match="delivery_timeout must be at least"):
            broker.producer(delivery_timeout=5)


def test_a_session_timeout_the_broker_refuses_is_a_config_error(
    kafka_url: str, topic: str, group: str
) -> None:
    """Apache Kafka refuses session timeouts below group.min.session.timeout.ms (6 s by default)
    in the JoinGroup; the adapter accepts them (a broker may allow less) and reports the
    refusal at once instead of retrying."""
    with mqkit.connect(kafka_url) as broker:
        started = time.monotonic()
        with pytest.raises(ConfigError, match="session_timeout"):
            broker.consumer(topic, group=group, session_timeout=2)
        assert time.monotonic() - started < 10
