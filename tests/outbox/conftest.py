"""The application databases the outbox is tested on: a SQLite file, and PostgreSQL at
``MQKIT_TEST_POSTGRES_DSN`` (skipped when unset; required in CI like the stores' tests)."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mqkit.helpers.outbox import PostgresOutbox, SqliteOutbox
from mqkit.testing.stores import POSTGRES_ENV, service_url


@dataclass
class Database:
    """An application database with an outbox: ``transaction()`` yields a connection whose
    transaction commits when the block ends and rolls back when it raises."""

    kind: str
    target: str  # what `mqkit outbox relay --db` takes
    table: str
    outbox: SqliteOutbox | PostgresOutbox
    transaction: Callable[[], contextlib.AbstractContextManager[Any]]
    make_outbox: Callable[[], SqliteOutbox | PostgresOutbox]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        path = str(tmp_path / "app.db")

        @contextlib.contextmanager
        def sqlite_tx() -> Iterator[sqlite3.Connection]:
            conn = sqlite3.connect(path, timeout=30)
            try:
                with conn:  # commit, or roll back on an exception
                    yield conn
            finally:
                conn.close()

        def make_sqlite() -> SqliteOutbox:
            return SqliteOutbox(path, table=table)

        outbox = make_sqlite()
        yield Database("sqlite", path, table, outbox, sqlite_tx, make_sqlite)
        outbox.close()
        return
    import psycopg

    dsn = service_url(POSTGRES_ENV)

    @contextlib.contextmanager
    def pg_tx() -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(dsn) as conn, conn.transaction():
            yield conn

    def make_pg() -> PostgresOutbox:
        return PostgresOutbox(dsn, table=table)

    pg_outbox = make_pg()
    yield Database("postgres", dsn, table, pg_outbox, pg_tx, make_pg)
    pg_outbox.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"DROP FUNCTION IF EXISTS {table}_notify()")
