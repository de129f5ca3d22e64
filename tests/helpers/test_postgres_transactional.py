"""The transactional PostgreSQL variant: the handler's writes and the done mark commit together."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from mqkit.helpers.stores.postgres import PostgresStore
from mqkit.message import Delivery, Message
from mqkit.testing.stores import POSTGRES_ENV, service_url


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    s = PostgresStore(service_url(POSTGRES_ENV), pool_size=10)
    with s.connection() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS mqkit_test_ledger (order_id text, amount int, ns text)"
        )
    yield s
    s.close()


def message(order: str) -> Message:
    delivery = Delivery("payments", b"{}", None, {}, uuid.uuid4().hex, 0.0, 1)
    return Message(delivery, {"order": order, "amount": 5}, None, lambda *a: None)


def rows(store: PostgresStore, ns: str) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute(
            "SELECT order_id, amount FROM mqkit_test_ledger WHERE ns = %s ORDER BY order_id",
            (ns,),
        ).fetchall()


def test_writes_and_mark_commit_together_and_roll_back_together(store: PostgresStore) -> None:
    ns = uuid.uuid4().hex
    crash = [True]

    @store.transactional(namespace=ns, key=lambda m: str(m.value["order"]))
    def book(msg: Message, conn: Any) -> None:
        conn.execute(
            "INSERT INTO mqkit_test_ledger VALUES (%s, %s, %s)",
            (msg.value["order"], msg.value["amount"], ns),
        )
        if crash[0]:
            raise RuntimeError("crash after the write, before the commit")

    with pytest.raises(RuntimeError):
        book(message("o-1"))
    assert rows(store, ns) == [], "the write rolled back with the mark"
    crash[0] = False
    book(message("o-1"))  # the redelivery: runs on a clean slate
    book(message("o-1"))  # a duplicate: skipped
    book(message("o-2"))
    assert rows(store, ns) == [("o-1", 5), ("o-2", 5)]


def test_concurrent_duplicates_write_once(store: PostgresStore) -> None:
    ns = uuid.uuid4().hex
    start = threading.Barrier(6)

    @store.transactional(namespace=ns, key=lambda m: str(m.value["order"]))
    def book(msg: Message, conn: Any) -> None:
        conn.execute(
            "INSERT INTO mqkit_test_ledger VALUES (%s, %s, %s)",
            (msg.value["order"], msg.value["amount"], ns),
        )
        conn.execute("SELECT pg_sleep(0.05)")

    def deliver() -> None:
        start.wait()
        book(message("o-7"))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rows(store, ns) == [("o-7", 5)]
