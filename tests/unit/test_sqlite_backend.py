"""What only the durable embedded default promises: several processes, crashes, housekeeping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mqkit
from mqkit.backends import sqlite

_WORKER = """
import sys, json, time, mqkit
url, topic, group, role, n = sys.argv[1:6]
with mqkit.connect(url) as broker:
    if role == "produce":
        with broker.producer() as p:
            for i in range(int(n)):
                p.send(topic, f"{sys.argv[6]}-{i}", key=f"k{i % 5}")
    else:
        c = broker.consumer(topic, group=group)
        print("ready", flush=True)
        got = []
        while True:
            m = c.receive(timeout=3)
            if m is None:
                break
            got.append(m.value)
            time.sleep(0.002)  # some work, so the other processes get their share
            m.ack()
        print(json.dumps(got), flush=True)
"""


def test_processes_share_one_database_without_loss_or_overlap(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def spawn(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(script), url, "jobs", "workers", *args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    consumers = [spawn("consume", "0") for _ in range(3)]
    for c in consumers:
        assert c.stdout is not None and c.stdout.readline().strip() == "ready"
    producers = [spawn("produce", "400", f"p{n}") for n in range(2)]
    for p in producers:
        assert p.wait(timeout=60) == 0
    results = []
    for c in consumers:
        out, _ = c.communicate(timeout=60)
        results.append(__import__("json").loads(out.splitlines()[-1]))
    everything = [v for r in results for v in r]
    expected = {f"p{n}-{i}" for n in range(2) for i in range(400)}
    assert len(everything) == len(expected) and set(everything) == expected
    assert sum(1 for r in results if r) >= 2, "work was shared between processes"


def test_a_live_consumer_keeps_its_lease_past_the_visibility_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lease.db'}?visibility_timeout=0.3&poll_interval=0.01"
    with mqkit.connect(url) as broker:
        slow = broker.consumer("t", group="g", prefetch=1)
        other = broker.consumer("t", group="g", prefetch=1)
        with broker.producer() as producer:
            producer.send("t", "job")
        first = slow.receive(timeout=5)
        assert first is not None
        # A slow handler: three visibility timeouts pass, the lease is kept alive.
        assert other.receive(timeout=1.0) is None
        slow.close()  # gone without ack: the group gets it back at once
        again = other.receive(timeout=5)
        assert again is not None and again.id == first.id and again.attempt == 2
        again.ack()
        assert other.receive(timeout=0.5) is None


def test_a_lease_that_runs_out_is_delivered_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'expire.db'}?visibility_timeout=0.3&poll_interval=0.01"
    with mqkit.connect(url) as broker:
        consumer = broker.consumer("t", group="g", prefetch=1)
        with broker.producer() as producer:
            producer.send("t", "job")
        # Another connection leases it and never extends it, as a killed process would not.
        store = sqlite.Store(
            str(tmp_path / "expire.db"), memory=False, busy_timeout=5, synchronous="normal"
        )
        try:
            [leased] = store.lease("g", ["t"], "dead-process", 0.3, 1)
        finally:
            store.close()
        assert consumer.receive(timeout=0.1) is None
        again = consumer.receive(timeout=5)
        assert again is not None and again.id == leased.id and again.attempt == 2
        again.ack()


def test_acked_messages_are_cleaned_up(tmp_path: Path, monkeypatch: object) -> None:
    url = f"sqlite:///{tmp_path / 'gc.db'}"
    with mqkit.connect(url) as broker:
        consumer = broker.consumer("t", group="g")
        with broker.producer() as producer:
            for i in range(sqlite.GC_EVERY + 10):
                producer.send("t", i)
        for _ in range(sqlite.GC_EVERY + 10):
            message = consumer.receive(timeout=5)
            assert message is not None
            message.ack()
    import sqlite3

    with sqlite3.connect(tmp_path / "gc.db") as conn:
        left = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert left <= 10


def test_data_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    with mqkit.connect(url) as broker:
        broker.consumer("t", group="g").close()
        with broker.producer() as producer:
            producer.send("t", "kept", key="k", headers={"h": "1"})
    time.sleep(0.01)
    with mqkit.connect(url) as broker:
        message = broker.consumer("t", group="g").receive(timeout=5)
        assert message is not None
        assert (message.value, message.key, dict(message.headers)) == ("kept", "k", {"h": "1"})
        message.ack()


def test_a_producer_never_closed_still_delivers_at_exit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exit.db'}"
    with mqkit.connect(url) as broker:
        broker.consumer("t", group="g").close()
    script = "import sys, mqkit\np = mqkit.connect(sys.argv[1]).producer()\n"
    script += "for i in range(500):\n    p.send('t', i)\n"  # then exit: no flush, no close
    done = subprocess.run(
        [sys.executable, "-c", script, url],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=60,
    )
    assert done.returncode == 0
    with mqkit.connect(url) as broker:
        consumer = broker.consumer("t", group="g")
        got = []
        while (message := consumer.receive(timeout=0.5)) is not None:
            got.append(message.value)
            message.ack()
    assert sorted(got) == list(range(500))


def test_docs_show_the_options_as_declared() -> None:
    from pathlib import Path

    from mqkit.adapter import options_table
    from mqkit.backends.sqlite import SqliteSettings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "embedded.md").read_text()
    assert options_table(SqliteSettings) in doc
