"""The asyncio side: ``PostgresOutbox.send_async`` in psycopg's ``AsyncConnection``
transaction, and a spooling producer through ``mqkit.aio``."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import mqkit
import mqkit.aio
from mqkit.helpers.outbox import PostgresOutbox, Relay
from mqkit.testing.stores import POSTGRES_ENV, service_url


def test_async_send_commits_and_rolls_back_with_the_transaction(
    tmp_db: str, topic: str, group: str
) -> None:
    import psycopg

    dsn = service_url(POSTGRES_ENV)
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    outbox = PostgresOutbox(dsn, table=table)

    async def write() -> str:
        conn: Any = await psycopg.AsyncConnection.connect(dsn)
        async with conn:
            try:
                async with conn.transaction():
                    await outbox.send_async(conn, topic, "rolled back")
                    raise RuntimeError
            except RuntimeError:
                pass
            async with conn.transaction():
                mid: str = await outbox.send_async(conn.cursor(), topic, "committed", key="k")
        return mid

    try:
        mid = asyncio.run(write())
        with mqkit.connect(tmp_db) as broker:
            broker.declare(topic, group=group)
            relay = Relay(outbox, broker=broker)
            assert relay.drain() == 1
            relay.close()
            with broker.consumer(topic, group=group) as consumer:
                message = consumer.receive(timeout=5)
                assert message is not None
                assert (message.id, message.value, message.key) == (mid, "committed", "k")
                message.ack()
                assert consumer.receive(timeout=0.5) is None
    finally:
        outbox.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"DROP FUNCTION IF EXISTS {table}_notify()")


def test_an_async_producer_spools_too(tmp_db: str, topic: str, group: str, tmp_path: Path) -> None:
    async def main() -> list[Any]:
        async with mqkit.aio.connect(tmp_db) as broker:
            await broker.declare(topic, group=group)
            async with broker.producer(spool=tmp_path / "a.spool") as producer:
                assert producer.sync.spool is not None
                for n in range(20):
                    await producer.send(topic, n, key="k")
                await producer.flush()
                assert producer.sync.spool.forwarded == 20
            got = []
            async with broker.consumer(topic, group=group) as consumer:
                while (message := await consumer.receive(timeout=1)) is not None:
                    await message.ack()
                    got.append(message.value)
            return got

    assert asyncio.run(main()) == list(range(20))


def test_relay_runs_inside_an_async_app(tmp_db: str, topic: str, tmp_path: Path) -> None:
    from mqkit.helpers.outbox import SqliteOutbox

    outbox = SqliteOutbox(tmp_path / "app.db")
    got: list[Any] = []
    app = mqkit.aio.App(tmp_db)

    @app.handler(topic, group="billing")
    async def bill(message: mqkit.aio.AsyncMessage) -> None:
        got.append(message.value)
        if len(got) == 3:
            app.stop()

    Relay(outbox, poll_interval=0.2).attach(app)

    def write() -> None:
        import sqlite3

        with sqlite3.connect(tmp_path / "app.db") as conn:
            for n in range(3):
                outbox.send(conn, topic, n, key="k")

    async def main() -> None:
        async with asyncio.timeout(30):
            await app.run(install_signal_handlers=False, on_ready=write)

    asyncio.run(main())
    assert got == [0, 1, 2]
    assert outbox.pending() == 0
    outbox.close()
