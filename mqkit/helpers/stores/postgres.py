"""A PostgreSQL idempotency store, and a transactional variant for PostgreSQL side effects.

Records live in one table (``mqkit_idempotency`` by default, created if missing); expiry uses
the server's clock, so every machine agrees on it. Needs ``pip install 'mqkit[postgres]'``.

:meth:`PostgresStore.transactional` closes the gap that claim/process/mark cannot: the handler
gets the connection of an open transaction, and its writes and the done mark commit together or
not at all. A crash anywhere before the commit rolls both back (the redelivery runs the handler
again on a clean slate); after the commit, every redelivery is skipped. For writes to that same
database this is exactly-once.

:class:`AsyncPostgresStore` is the store for ``mqkit.aio`` (psycopg's async connections), with
the same table and statements.
"""

from __future__ import annotations

import asyncio
import importlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from mqkit.errors import ConfigError
from mqkit.helpers.idempotency import DEFAULT_TTL, default_key
from mqkit.helpers.stores.base import Claim
from mqkit.message import Message

if TYPE_CHECKING:
    import psycopg

_NOW = "extract(epoch from clock_timestamp())"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    key        text PRIMARY KEY,
    done       boolean NOT NULL,
    token      text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS {table}_expiry ON {table} (expires_at);
"""


def _sweep_sql(t: str) -> str:
    return f"DELETE FROM {t} WHERE expires_at <= {_NOW}"


def _claim_sql(t: str) -> tuple[str, str]:
    """Take a free or expired identity (a row back if taken); else read what holds it."""
    take = (
        f"INSERT INTO {t} (key, done, token, expires_at) "
        f"VALUES (%s, false, %s, {_NOW} + %s) "
        "ON CONFLICT (key) DO UPDATE SET done = false, token = EXCLUDED.token, "
        f"expires_at = EXCLUDED.expires_at WHERE {t}.expires_at <= {_NOW} "
        "RETURNING 1"
    )
    look = f"SELECT done, expires_at - {_NOW} FROM {t} WHERE key = %s"
    return take, look


def _held(row: tuple[Any, ...] | None) -> Claim | None:
    """The claim an identity's live record means; ``None`` if it is gone (claim again)."""
    if row is None or row[1] <= 0:
        return None
    return Claim("done") if row[0] else Claim("busy", float(row[1]))


def _complete_sql(t: str) -> str:
    """Mark done; true if the caller's claim was still the one held."""
    return (
        f"WITH prev AS (SELECT done, token FROM {t} WHERE key = %s) "
        f"INSERT INTO {t} (key, done, token, expires_at) VALUES (%s, true, '', "
        f"{_NOW} + %s) ON CONFLICT (key) DO UPDATE SET done = true, token = '', "
        "expires_at = EXCLUDED.expires_at "
        "RETURNING (SELECT NOT prev.done AND prev.token = %s FROM prev)"
    )


def _release_sql(t: str) -> str:
    return f"DELETE FROM {t} WHERE key = %s AND NOT done AND token = %s"


def _psycopg() -> Any:
    try:
        return importlib.import_module("psycopg")
    except ImportError:
        raise ConfigError("PostgresStore needs psycopg 3: pip install 'mqkit[postgres]'") from None


TransactionalHandler = Callable[[Message, "psycopg.Connection[Any]"], Any]


class _Settings:
    """What the sync and the async store are configured with."""

    def __init__(
        self,
        dsn: str,
        table: str,
        sweep_every: int,
        connect_timeout: float,
        synchronous_commit: bool,
    ) -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"table name {table!r} must be letters, digits and _")
        self._pg = _psycopg()
        self.dsn = dsn
        self.table = table
        self._timeout = connect_timeout
        self._sync = synchronous_commit
        self._sweep_every = sweep_every
        self._ops = 0
        self._closed = False


class PostgresStore(_Settings):
    """Identities in PostgreSQL, shared by every consumer that reaches the server.

    ``PostgresStore("postgresql://user@host:5432/db")``; keeps up to ``pool_size`` connections
    (autocommit) for the threads that use it. Expired rows are swept every ``sweep_every``
    claims. Each claim and done mark is a commit, flushed to disk by the server;
    ``synchronous_commit=False`` skips that wait (a server crash may then forget the last
    fraction of a second of marks, so those messages may run again).
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "mqkit_idempotency",
        pool_size: int = 8,
        sweep_every: int = 1000,
        connect_timeout: float = 10.0,
        synchronous_commit: bool = True,
    ) -> None:
        super().__init__(dsn, table, sweep_every, connect_timeout, synchronous_commit)
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        with self.connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(_SCHEMA.format(table=table))
            except self._pg.errors.UniqueViolation:  # another process created it just now
                pass

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection; broken ones are dropped, not reused."""
        if self._closed:
            raise ConfigError("PostgresStore is closed")
        self._slots.acquire()
        conn: psycopg.Connection[Any] | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                try:
                    conn = self._pg.connect(
                        self.dsn, autocommit=True, connect_timeout=max(1, int(self._timeout))
                    )
                except self._pg.OperationalError as exc:
                    raise ConfigError(
                        f"cannot reach PostgreSQL for the idempotency store: {exc}"
                    ) from exc
                if not self._sync:
                    conn.execute("SET synchronous_commit = off")
            assert conn is not None
            yield conn
        finally:
            if conn is not None:
                if conn.closed or conn.broken or self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    # -- the store protocol ----------------------------------------------------------------

    def claim(self, key: str, token: str, lease: float) -> Claim:
        take, look = _claim_sql(self.table)
        with self._lock:
            self._ops += 1
            sweep = self._ops % self._sweep_every == 0
        with self.connection() as conn:
            if sweep:
                conn.execute(_sweep_sql(self.table))
            while True:
                if conn.execute(take, (key, token, lease)).fetchone() is not None:
                    return Claim("claimed")
                claim = _held(conn.execute(look, (key,)).fetchone())
                if claim is not None:
                    return claim  # else released or expired in between: try again

    def complete(self, key: str, token: str, ttl: float) -> bool:
        with self.connection() as conn:
            row = conn.execute(_complete_sql(self.table), (key, key, ttl, token)).fetchone()
        return bool(row and row[0])

    def release(self, key: str, token: str) -> None:
        with self.connection() as conn:
            conn.execute(_release_sql(self.table), (key, token))

    # -- exactly-once for PostgreSQL side effects ------------------------------------------

    def transactional(
        self,
        *,
        namespace: str,
        key: Callable[[Message], str] = default_key,
        ttl: float = DEFAULT_TTL,
    ) -> Callable[[TransactionalHandler], Callable[[Message], Any]]:
        """Decorator: ``fn(message, conn)`` runs in a transaction that also marks it done.

        ``namespace`` is usually the consumer group. If the identity is already done, ``fn``
        is not called. If ``fn`` raises (or nacks the message), the transaction rolls back,
        mark included. Concurrent duplicates wait on the identity's row lock, then skip.
        Use ``conn`` (a psycopg connection) for every write that must happen exactly once::

            @app.handler("payments", group="ledger")
            @store.transactional(namespace="ledger")
            def book(message, conn):
                conn.execute("INSERT INTO ledger ...", (...))
        """
        t = self.table
        rollback = self._pg.Rollback

        def decorate(fn: TransactionalHandler) -> Callable[[Message], Any]:
            def run_once(message: Message) -> Any:
                identity = f"{namespace}:{key(message)}"
                with self.connection() as conn, conn.transaction():
                    fresh = conn.execute(
                        f"INSERT INTO {t} (key, done, token, expires_at) VALUES (%s, true, '', "
                        f"{_NOW} + %s) ON CONFLICT (key) DO UPDATE SET done = true, token = '', "
                        f"expires_at = EXCLUDED.expires_at "
                        f"WHERE {t}.expires_at <= {_NOW} OR NOT {t}.done RETURNING 1",
                        (identity, ttl),
                    ).fetchone()
                    if fresh is None:
                        return None  # already done: nothing to do
                    result = fn(message, conn)
                    if message.settled == "nack":
                        raise rollback()
                    return result

            run_once.__name__ = getattr(fn, "__name__", "run_once")
            run_once.__doc__ = fn.__doc__
            return run_once

        return decorate


class AsyncPostgresStore(_Settings):
    """:class:`PostgresStore` for ``mqkit.aio`` (psycopg 3's ``AsyncConnection``): the same
    table and statements, so sync and async consumers of one group share their records.

    ``AsyncPostgresStore("postgresql://user@host:5432/db")``; keeps up to ``pool_size``
    autocommit connections; the table is created on first use. Use it on one event loop.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "mqkit_idempotency",
        pool_size: int = 8,
        sweep_every: int = 1000,
        connect_timeout: float = 10.0,
        synchronous_commit: bool = True,
    ) -> None:
        super().__init__(dsn, table, sweep_every, connect_timeout, synchronous_commit)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._ready = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled autocommit connection; broken ones are dropped, not reused."""
        if self._closed:
            raise ConfigError("AsyncPostgresStore is closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                yield conn
            finally:
                if conn.closed or conn.broken or self._closed:
                    await conn.close()
                else:
                    self._idle.append(conn)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await self._pg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self._timeout))
            )
        except self._pg.OperationalError as exc:
            raise ConfigError(f"cannot reach PostgreSQL for the idempotency store: {exc}") from exc
        if not self._sync:
            await conn.execute("SET synchronous_commit = off")
        if not self._ready:
            try:
                async with conn.transaction():
                    await conn.execute(_SCHEMA.format(table=self.table))
            except self._pg.errors.UniqueViolation:  # another process created it just now
                pass
            self._ready = True
        return conn  # type: ignore[no-any-return]

    async def claim(self, key: str, token: str, lease: float) -> Claim:
        take, look = _claim_sql(self.table)
        self._ops += 1
        async with self.connection() as conn:
            if self._ops % self._sweep_every == 0:
                await conn.execute(_sweep_sql(self.table))
            while True:
                if await (await conn.execute(take, (key, token, lease))).fetchone() is not None:
                    return Claim("claimed")
                claim = _held(await (await conn.execute(look, (key,))).fetchone())
                if claim is not None:
                    return claim

    async def complete(self, key: str, token: str, ttl: float) -> bool:
        async with self.connection() as conn:
            cursor = await conn.execute(_complete_sql(self.table), (key, key, ttl, token))
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def release(self, key: str, token: str) -> None:
        async with self.connection() as conn:
            await conn.execute(_release_sql(self.table), (key, token))

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            await self._idle.pop().close()
