"""Relay processes killed with SIGKILL at random moments: 0 lost, 0 duplicated effects.

Each run writes a burst of rows, starts two ``mqkit outbox relay`` processes on the table (one
row per round, so they are mid-work when killed) and kills each -9 a random time after it
started relaying. A final relay drains the rest. A consumer behind the idempotency helper counts
side effects meanwhile: every row has exactly one, and every copy the broker delivered carries
the id its ``send`` returned. ``MQKIT_OUTBOX_KILL_RUNS`` sets the number of kills (default 6;
e.g. 200 for a long run).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import mqkit
from mqkit.helpers import SqliteStore, idempotent
from mqkit.message import Message
from tests.outbox.conftest import Database

RUNS = int(os.environ.get("MQKIT_OUTBOX_KILL_RUNS", "6"))
PER_RUN = 150
KEYS = 4


def relay_process(database: Database, url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mqkit.cli",
            "outbox",
            "relay",
            "--db",
            database.target,
            "--table",
            database.table,
            "--url",
            url,
            "--batch",
            "1",
            "--lease",
            "0.5",
            "--poll-interval",
            "0.2",
            *extra,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_relay_killed_at_random_moments_loses_nothing_and_repeats_nothing(
    database: Database, tmp_db: str, topic: str, group: str, tmp_path: object
) -> None:
    rng = random.Random()
    written: dict[tuple[str, int], str] = {}
    order: dict[str, list[str]] = defaultdict(list)
    effects: Counter[tuple[str, int]] = Counter()
    deliveries: Counter[str] = Counter()
    ids_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    first_seen: dict[str, list[str]] = defaultdict(list)
    stop = threading.Event()
    dedup = idempotent(SqliteStore(f"{tmp_path}/dedup.db"), namespace=group)

    @dedup
    def effect(message: Message) -> None:
        key, n = message.value
        effects[(key, n)] += 1
        first_seen[key].append(message.id)

    with mqkit.connect(tmp_db) as broker:
        broker.declare(topic, group=group)

        def consume() -> None:
            with broker.consumer(topic, group=group) as consumer:
                while not stop.is_set():
                    message = consumer.receive(timeout=0.2)
                    if message is None:
                        continue
                    deliveries[message.id] += 1
                    ids_of[tuple(message.value)].add(message.id)
                    effect(message)
                    message.ack()

        consumer = threading.Thread(target=consume)
        consumer.start()
        killed_mid_work = 0
        try:
            count = 0
            for _ in range(RUNS):
                with database.transaction() as conn:
                    for _ in range(PER_RUN):
                        key = f"k{count % KEYS}"
                        mid = database.outbox.send(conn, topic, [key, count], key=key)
                        written[(key, count)] = mid
                        order[key].append(mid)
                        count += 1
                pair = [relay_process(database, tmp_db) for _ in range(2)]  # two at once
                for relay in pair:
                    assert relay.stderr is not None
                    started = relay.stderr.readline()  # "relaying ...": at work now
                    assert "relaying" in started, started
                for relay in pair:
                    time.sleep(rng.uniform(0.0, 0.15))
                    relay.send_signal(signal.SIGKILL)
                    relay.wait()
                    assert relay.stderr is not None
                    relay.stderr.close()
                killed_mid_work += database.outbox.pending() > 0
            final = relay_process(database, tmp_db, "--drain")
            _, err = final.communicate(timeout=120)
            assert final.returncode == 0, err
            assert database.outbox.pending() == 0
            deadline = time.monotonic() + 30
            while len(effects) < len(written) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # late copies, if any, come in too
        finally:
            stop.set()
            consumer.join()
    lost = [k for k in written if effects[k] == 0]
    doubled = [k for k, n in effects.items() if n > 1]
    repeats = sum(deliveries.values()) - len(deliveries)
    print(
        f"\n{database.kind}: {RUNS} runs of 2 relays killed ({killed_mid_work} with rows pending), "
        f"{len(written)} rows, {sum(deliveries.values())} deliveries, {repeats} repeated "
        f"copies, {len(lost)} lost, {len(doubled)} duplicated effects"
    )
    assert lost == []
    assert doubled == []
    assert set(deliveries) == set(written.values()), "no message under another id"
    assert all(ids_of[k] == {mid} for k, mid in written.items()), "copies carry the same id"
    assert first_seen == order, "each key's effects happen in the order written"
    assert dedup.stats.skipped == repeats
