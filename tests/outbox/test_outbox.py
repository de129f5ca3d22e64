"""The outbox against real SQLite and PostgreSQL, published to a real ``sqlite://`` queue.

Rollback publishes nothing, commit publishes once under the id ``send`` returned, two relays at
once publish every row once with each key in order, a relay that dies after publishing leaves
the rows to be published again under the same ids (the idempotency helper runs them once).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

import mqkit
from mqkit.app import App
from mqkit.helpers import MemoryStore, idempotent
from mqkit.helpers.outbox import Relay
from mqkit.message import Message
from tests.outbox.conftest import Database


def receive_all(broker: mqkit.Broker, topic: str, group: str, idle: float = 1.0) -> list[Message]:
    """Every message of ``group`` until none came for ``idle`` seconds, acked."""
    out = []
    with broker.consumer(topic, group=group) as consumer:
        while (message := consumer.receive(timeout=idle)) is not None:
            message.ack()
            out.append(message)
    return out


def test_rollback_publishes_nothing_and_commit_publishes_once(
    database: Database, tmp_db: str, topic: str, group: str
) -> None:
    outbox = database.outbox
    with pytest.raises(RuntimeError), database.transaction() as conn:
        outbox.send(conn, topic, {"n": "rolled back"}, key="k")
        raise RuntimeError("the business write failed")
    with database.transaction() as conn:
        mid = outbox.send(
            conn,
            topic,
            {"n": "committed"},
            key="k",
            headers={"tenant": "t1", "size": 3, "raw": b"\x00\xff", "ok": True},
            correlation_id="c-1",
        )
    assert outbox.pending() == 1
    with mqkit.connect(tmp_db) as broker:
        broker.declare(topic, group=group)
        relay = Relay(outbox, broker=broker)
        assert relay.drain() == 1
        assert relay.drain() == 0
        relay.close()
        got = receive_all(broker, topic, group)
    assert [(m.id, m.value, m.key) for m in got] == [(mid, {"n": "committed"}, "k")]
    assert got[0].headers == {"tenant": "t1", "size": 3, "raw": b"\x00\xff", "ok": True}
    assert got[0].correlation_id == "c-1"
    assert got[0].content_type == "application/json"
    assert outbox.pending() == 0


def test_retention_keeps_sent_rows_then_deletes_them(
    database: Database, tmp_db: str, topic: str
) -> None:
    with database.transaction() as conn:
        for n in range(3):
            database.outbox.send(conn, topic, n)
    with mqkit.connect(tmp_db) as broker:
        relay = Relay(database.outbox, broker=broker, retention=0.5)
        assert relay.drain() == 3
        with database.transaction() as conn:
            kept = conn.execute(f"SELECT count(*) FROM {database.table}").fetchone()[0]
        assert kept == 3, "sent rows are kept for the retention"
        time.sleep(0.6)
        with database.transaction() as conn:
            database.outbox.send(conn, topic, 3)
        assert relay.drain() == 1  # its finish sweeps what is older than the retention
        relay.close()
    with database.transaction() as conn:
        left = conn.execute(f"SELECT count(*) FROM {database.table}").fetchone()[0]
    assert left == 1


def test_two_relays_at_once_publish_each_row_once_in_key_order(
    database: Database, tmp_db: str, topic: str, group: str
) -> None:
    keys, per_key = 12, 25
    ids: dict[str, list[str]] = defaultdict(list)
    relays = [
        Relay(database.make_outbox(), tmp_db, batch=7, lease=10, poll_interval=0.2)
        for _ in range(2)
    ]
    with mqkit.connect(tmp_db) as broker:
        broker.declare(topic, group=group)
        for relay in relays:
            relay.start()
        try:
            for n in range(per_key):  # written while both relays run, one commit per round
                with database.transaction() as conn:
                    for k in range(keys):
                        key = f"key-{k}"
                        ids[key].append(database.outbox.send(conn, topic, [key, n], key=key))
            deadline = time.monotonic() + 30
            while database.outbox.pending() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for relay in relays:
                relay.stop(timeout=10)
        assert database.outbox.pending() == 0
        got = receive_all(broker, topic, group)
    counts = Counter(m.id for m in got)
    assert [i for i, c in counts.items() if c > 1] == [], "no row published twice"
    assert len(got) == keys * per_key, "no row lost"
    seen: dict[str, list[str]] = defaultdict(list)
    for message in got:
        seen[message.key or ""].append(message.id)
    assert seen == ids, "each key's messages arrive in the order they were written"
    assert all(r.stats.published > 0 for r in relays), [r.stats for r in relays]
    assert sum(r.stats.published for r in relays) == keys * per_key


def test_a_relay_dead_after_publishing_leaves_the_rows_to_be_published_again_same_ids(
    database: Database, tmp_db: str, topic: str, group: str
) -> None:
    """The step the kill test hits at random, taken on purpose: published, never finished."""
    with database.transaction() as conn:
        sent = [database.outbox.send(conn, topic, n, key="k") for n in range(5)]
    effects: Counter[int] = Counter()
    dedup = idempotent(MemoryStore(), namespace=group)
    handler = dedup(lambda message: effects.update([message.value]))
    with mqkit.connect(tmp_db) as broker:
        broker.declare(topic, group=group)
        dying = Relay(database.make_outbox(), broker=broker, lease=0.5)
        rows = dying.outbox.claim(dying.token, 100, dying.lease)
        dying._publish(rows)  # confirmed by the broker; then the process "dies"
        heir = Relay(database.make_outbox(), broker=broker)
        assert heir.run_once() == 0, "the dead relay's lease still holds the key"
        time.sleep(0.6)
        assert heir.drain() == 5
        heir.close()
        got = receive_all(broker, topic, group)
    assert [m.id for m in got] == sent + sent, "published twice, under the same ids"
    for message in got:
        handler(message)
    assert effects == Counter(range(5)), "one effect each"
    assert dedup.stats.skipped == 5


def test_relay_runs_inside_an_app(database: Database, tmp_db: str, topic: str) -> None:
    done = threading.Event()
    got: list[Any] = []
    app = App(tmp_db)

    @app.handler(topic, group="billing")
    def bill(message: Message) -> None:
        got.append(message.value)
        if len(got) == 3:
            done.set()

    Relay(database.make_outbox(), poll_interval=0.2).attach(app)

    def write() -> None:
        with database.transaction() as conn:
            for n in range(3):
                database.outbox.send(conn, topic, n, key="k")

    def stop_when_done() -> None:
        done.wait(20)
        app.stop()

    stopper = threading.Thread(target=stop_when_done)
    stopper.start()
    app.run(install_signal_handlers=False, on_ready=write)
    stopper.join()
    app.close()
    assert got == [0, 1, 2]
    assert database.outbox.pending() == 0


def test_a_row_the_producer_refuses_is_parked_and_holds_its_key_back(
    database: Database, tmp_db: str, topic: str, group: str
) -> None:
    with database.transaction() as conn:
        k1 = database.outbox.send(conn, topic, "k-1", key="k")
        bad = database.outbox.send(conn, topic, "k-2", key="k")
        database.outbox.send(conn, topic, "k-3", key="k")
        j1 = database.outbox.send(conn, topic, "j-1", key="j")
    with database.transaction() as conn:  # a corrupt row: no producer takes this id
        mark = "?" if database.kind == "sqlite" else "%s"
        conn.execute(
            f"UPDATE {database.table} SET message_id = 'not-an-id' WHERE message_id = {mark}",
            (bad,),
        )
    with mqkit.connect(tmp_db) as broker:
        broker.declare(topic, group=group)
        relay = Relay(database.outbox, broker=broker)
        published = relay.run_once() + relay.run_once() + relay.run_once()
        relay.close()
        got = receive_all(broker, topic, group)
    assert published == 2
    assert relay.stats.parked == 1
    assert [(m.id, m.value) for m in got] == [(k1, "k-1"), (j1, "j-1")], "k-3 waits behind k-2"
    assert database.outbox.pending() == 1  # k-3; the parked row is not counted
