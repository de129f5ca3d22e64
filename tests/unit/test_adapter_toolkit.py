"""The adapter toolkit (mqkit.adapter) and the envelope rule, without a broker."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

import mqkit
from mqkit import envelope
from mqkit.adapter import (
    CONSUMER,
    PRODUCER,
    Deadline,
    ReceiveQueue,
    Settings,
    option,
    options_table,
)
from mqkit.errors import ConfigError, MessageTooLarge


@dataclass(frozen=True)
class Example(Settings):
    prefetch: int = option(10, "Messages fetched ahead.", minimum=1, scopes=[CONSUMER])
    linger: float = option(0.0, "Seconds a send may wait | batch.", scopes=[PRODUCER])
    tls: bool = option(False, "Use TLS.")
    mode: str = option("sync", "How acks commit.", choices=("sync", "async"))
    group_prefix: str | None = option(None, "Prefix of group names.")


def test_options_are_read_converted_and_checked() -> None:
    s = Example.read("x://h", {"prefetch": "5", "tls": "yes", "mode": "ASYNC"})
    assert (s.prefetch, s.tls, s.mode, s.linger, s.group_prefix) == (5, True, "async", 0.0, None)
    with pytest.raises(ConfigError, match="prefetch='0' must be >= 1"):
        Example.read("x://h", {"prefetch": "0"})
    with pytest.raises(ConfigError, match="is not an integer"):
        Example.read("x://h", {"prefetch": "many"})
    with pytest.raises(ConfigError, match="is not true/false"):
        Example.read("x://h", {"tls": "maybe"})
    with pytest.raises(ConfigError, match="must be one of sync, async"):
        Example.read("x://h", {"mode": "later"})
    with pytest.raises(
        ConfigError, match=r"unknown option\(s\) prefech; known options: .*prefetch"
    ):
        Example.read("x://h", {"prefech": 3})


def test_overrides_only_where_the_option_applies() -> None:
    s = Example.read("x://h", {})
    assert s.override("x://h consumer", {"prefetch": 2}, CONSUMER).prefetch == 2
    assert s.override("x://h producer", {"linger": "0.5"}, PRODUCER).linger == 0.5
    with pytest.raises(ConfigError, match=r"tls is not set per consumer; .* connect\(\)$"):
        s.override("x://h consumer", {"tls": True}, CONSUMER)
    with pytest.raises(ConfigError, match=r"prefetch is not set per producer; .*consumer\(\)"):
        s.override("x://h producer", {"prefetch": 2}, PRODUCER)
    with pytest.raises(ConfigError, match="unknown option"):
        s.override("x://h producer", {"nope": 1}, PRODUCER)
    assert s.override("x://h producer", {}, PRODUCER) is s


def test_options_table_renders_every_option() -> None:
    table = options_table(Example)
    assert "| `prefetch` | int | `10` | consumer | Messages fetched ahead. |" in table
    assert "| `mode` | sync / async | `sync` | — | How acks commit. |" in table
    assert "| `tls` | bool | `false` |" in table
    assert "Seconds a send may wait \\| batch." in table
    assert table.count("\n") == 2 + len(Example.specs())


def test_receive_queue_hands_out_buffered_items_even_without_waiting() -> None:
    q: ReceiveQueue[int] = ReceiveQueue()
    q.put(0)
    q.put_many([1, 2])
    assert [q.get(0), q.get(0), q.get(0), q.get(0)] == [0, 1, 2, None]
    q.put_many([3, 4, 5])
    assert q.take_where(lambda i: i % 2 == 1) == [3, 5]
    assert q.take_all() == [4]


def test_receive_queue_wakes_on_put_and_on_close() -> None:
    q: ReceiveQueue[str] = ReceiveQueue()
    threading.Timer(0.1, q.put, ["late"]).start()
    start = time.monotonic()
    assert q.get(5) == "late"
    assert time.monotonic() - start < 2
    threading.Timer(0.1, q.close).start()
    start = time.monotonic()
    assert q.get(None) is None
    assert time.monotonic() - start < 2
    q.put("after close")
    assert q.get(0) is None
    assert q.take_all() == ["after close"]


def test_deadline() -> None:
    assert Deadline(None).remaining() is None
    assert Deadline(None).remaining(0.5) == 0.5
    d = Deadline(0.05)
    assert 0 < (d.remaining() or 0) <= 0.05
    time.sleep(0.06)
    assert d.expired and d.remaining() == 0.0


def test_reserved_header_names_are_refused_on_send() -> None:
    assert envelope.check_headers({envelope.RETRY_ATTEMPTS: "2", "a": "b"}) == {
        envelope.RETRY_ATTEMPTS: "2",
        "a": "b",
    }
    with mqkit.connect("memory://toolkit-headers") as broker, broker.producer() as producer:
        for name in (envelope.ID, envelope.KEY, "mqkit-anything"):
            with pytest.raises(ValueError, match="reserved prefix"):
                producer.send("t", 1, headers={name: "x"})
        with pytest.raises(TypeError, match="values are str, bytes, int, float or bool"):
            producer.send("t", 1, headers={"n": [1]})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match=r"standard field.*correlation_id="):
            producer.send("t", 1, headers={"Correlation-ID": "c"})


def test_bodies_above_the_backends_limit_are_refused() -> None:
    with (
        mqkit.connect("memory://toolkit-size") as broker,
        broker.producer(serializer="bytes") as producer,
    ):
        limit = broker.features.max_body_size
        with pytest.raises(MessageTooLarge, match=f"takes at most {limit}"):
            producer.send("t", b"x" * (limit + 1))
        producer.send("t", b"x" * 10)


def test_transport_id_is_stable() -> None:
    assert envelope.transport_id("t", 0, 17) == envelope.transport_id("t", 0, 17)
    assert envelope.transport_id("t", 0, 17) != envelope.transport_id("t", 0, 18)
    assert envelope.decode_timestamp(envelope.encode_timestamp(12.345), 0.0) == 12.345
    assert envelope.decode_timestamp("junk", 1.0) == 1.0
