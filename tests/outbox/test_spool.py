"""Store-and-forward: a producer with ``spool=`` keeps accepting messages while its broker
refuses them, and forwards every one, in key order, when it answers again.

The broker is a real ``sqlite://`` queue made unavailable by another process holding its
database's exclusive lock (every write fails after the URL's ``busy_timeout``), for
``MQKIT_SPOOL_OUTAGE`` seconds (default 10) in the middle of a burst.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import mqkit
from mqkit.errors import ConfigError
from mqkit.spool import SpoolFull, pending_in

OUTAGE = float(os.environ.get("MQKIT_SPOOL_OUTAGE", "10"))


@contextmanager
def broker_refusing(db: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the queue's exclusive lock for ``seconds``."""
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n",
            str(db),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None
    assert locker.stdout.readline().strip() == "locked"
    try:
        yield locker
    finally:
        locker.wait(timeout=seconds + 30)
        locker.stdout.close()


def test_a_burst_through_a_broker_outage_loses_nothing(
    tmp_path: Path, topic: str, group: str
) -> None:
    db = tmp_path / "queue.db"
    url = f"sqlite:///{db}?busy_timeout=0.2"
    sent: dict[str, list[str]] = defaultdict(list)
    with mqkit.connect(url) as broker:
        broker.declare(topic, group=group)
        producer = broker.producer(spool=tmp_path / "orders.spool", spool_max=100_000)
        n = 0

        def burst(count: int, pause: float) -> None:
            nonlocal n
            for _ in range(count):
                key = f"customer-{n % 5}"
                sent[key].append(producer.send(topic, n, key=key))
                n += 1
                time.sleep(pause)

        burst(200, 0.0)
        producer.flush(10)
        with broker_refusing(db, OUTAGE):
            started = time.monotonic()
            while time.monotonic() - started < OUTAGE * 0.8:
                burst(50, 0.005)  # the order service keeps accepting orders
            status = producer.spool
            assert status is not None
            assert status.down_since is not None, "the broker refused while locked"
            assert status.pending > 0
            assert pending_in(tmp_path / "orders.spool") == status.pending
            producer.flush(1)  # returns: every message is safe in the spool
        burst(200, 0.0)
        deadline = time.monotonic() + 60
        while producer.spool.pending and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
        producer.flush(10)
        status = producer.spool
        producer.close()
        got: dict[str, list[str]] = defaultdict(list)
        with broker.consumer(topic, group=group) as consumer:
            while (message := consumer.receive(timeout=1.0)) is not None:
                got[message.key or ""].append(message.id)
                message.ack()
    total = sum(len(ids) for ids in sent.values())
    print(
        f"\nspool: {total} sent, {sum(len(ids) for ids in got.values())} received, "
        f"{status.failures if status else '?'} failed forwarding attempts during "
        f"a {OUTAGE:.0f} s outage"
    )
    # Each key's ids in order, each once (the sqlite queue writes a batch atomically, so a
    # refused batch is never half-published here; on other brokers repeats keep their ids).
    assert got == sent


def test_a_full_spool_is_a_clear_error(tmp_path: Path, topic: str) -> None:
    db = tmp_path / "queue.db"
    with mqkit.connect(f"sqlite:///{db}?busy_timeout=0.1") as broker:
        broker.declare(topic, group="g")
        producer = broker.producer(spool=tmp_path / "s.spool", spool_max=5)
        with broker_refusing(db, 3):
            for n in range(5):
                producer.send(topic, n)
            deadline = time.monotonic() + 5
            while producer.spool.down_since is None and time.monotonic() < deadline:  # type: ignore[union-attr]
                time.sleep(0.02)
            with pytest.raises(SpoolFull, match=r"holds 5 messages \(spool_max\).*unreachable"):
                producer.send(topic, 5)
        producer.close()  # forwards the five once the broker answers
        assert pending_in(tmp_path / "s.spool") == 0


def test_the_spool_options_are_checked(tmp_db: str, tmp_path: Path) -> None:
    with mqkit.connect(tmp_db) as broker:
        with broker.producer() as plain:
            assert plain.spool is None
        with pytest.raises(ConfigError, match="spool_max= needs spool"):
            broker.producer(spool_max=10)
        with broker.producer(spool=tmp_path / "one.spool") as first:
            with pytest.raises(ConfigError, match="in use by another producer"):
                broker.producer(spool=tmp_path / "one.spool")
            assert first.spool is not None


def test_mqkit_info_shows_what_waits_in_a_spool(tmp_path: Path, topic: str) -> None:
    from click.testing import CliRunner

    from mqkit.cli import main

    db = tmp_path / "queue.db"
    spool = tmp_path / "s.spool"
    with mqkit.connect(f"sqlite:///{db}?busy_timeout=0.1") as broker:
        broker.declare(topic, group="g")
        producer = broker.producer(spool=spool)
        with broker_refusing(db, 2):
            for n in range(3):
                producer.send(topic, n)
            result = CliRunner().invoke(
                main, ["info", "--url", f"sqlite:///{db}", "--spool", str(spool)]
            )
        producer.close()
    assert result.exit_code == 0, result.output
    assert f"spool {spool}: 3 message(s) waiting" in result.output.replace("\n", "")


def test_a_killed_producer_s_spool_is_forwarded_by_the_next_one(tmp_path: Path, topic: str) -> None:
    """Messages spooled while the broker refused survive the producer's process (killed -9)."""
    db = tmp_path / "queue.db"
    spool = tmp_path / "p.spool"
    url = f"sqlite:///{db}?busy_timeout=0.1"
    with mqkit.connect(url) as broker:
        broker.declare(topic, group="g")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, mqkit\n"
            "broker = mqkit.connect(sys.argv[1])\n"
            "producer = broker.producer(spool=sys.argv[2])\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "ids = [producer.send(sys.argv[3], n, key='k') for n in range(50)]\n"
            "print(' '.join(ids), flush=True)\n"
            "os.kill(os.getpid(), 9)\n",
            url,
            str(spool),
            topic,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    with broker_refusing(db, 3):
        child.stdin.write("go\n")
        child.stdin.flush()
        out = child.stdout.readline()
        assert child.wait(timeout=60) == -9
    child.stdin.close()
    child.stdout.close()
    sent = out.split()
    assert len(sent) == 50
    assert pending_in(spool) == 50
    with mqkit.connect(url) as broker:
        producer = broker.producer(spool=spool)  # the next producer on that spool
        producer.flush(30)
        producer.close()
        got = []
        with broker.consumer(topic, group="g") as consumer:
            while (message := consumer.receive(timeout=1.0)) is not None:
                got.append(message.id)
                message.ack()
    assert got == sent
