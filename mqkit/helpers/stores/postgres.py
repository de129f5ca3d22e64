"""A PostgreSQL idempotency store, and a transactional variant for PostgreSQL side effects.

Records live in one table (``mqkit_idempotency`` by default, created if missing); expiry uses
the server's clock, so every machine agrees on it. Needs ``pip install 'mqkit[postgres]'``.

:meth:`PostgresStore.transactional` closes the gap that claim/process/mark cannot: the handler
gets the connection of an open transaction, and its writes and the done mark commit together or
not at all. A crash anywhere before the commit rolls both back (the redelivery runs the handler
again on a clean slate); after the commit, every redelivery is skipped. For writes to that same
database this is exactly-once.
"""

from __future__ import annotations

import importlib
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _psycopg() -> Any:
    try:
        return importlib.import_module("psycopg")
    except ImportError:
        raise ConfigError("PostgresStore needs psycopg 3: pip install 'mqkit[postgres]'") from None


TransactionalHandler = Callable[[Message, "psycopg.Connection[Any]"], Any]


class PostgresStore:
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
        if not table.replace("_", "").isalnum():
            raise ValueError(f"table name {table!r} must be letters, digits and _")
        self._pg = _psycopg()
        self.dsn = dsn
        self.table = table
        self._timeout = connect_timeout
        self._sync = synchronous_commit
        self._sweep_every = sweep_every
        self._ops = 0
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        self._closed = False
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
        t = self.table
        with self._lock:
            self._ops += 1
            sweep = self._ops % self._sweep_every == 0
        with self.connection() as conn:
            if sweep:
                conn.execute(f"DELETE FROM {t} WHERE expires_at <= {_NOW}")
            while True:
                taken = conn.execute(
                    f"INSERT INTO {t} (key, done, token, expires_at) "
                    f"VALUES (%s, false, %s, {_NOW} + %s) "
                    "ON CONFLICT (key) DO UPDATE SET done = false, token = EXCLUDED.token, "
                    f"expires_at = EXCLUDED.expires_at WHERE {t}.expires_at <= {_NOW} "
                    "RETURNING 1",
                    (key, token, lease),
                ).fetchone()
                if taken is not None:
                    return Claim("claimed")
                row = conn.execute(
                    f"SELECT done, expires_at - {_NOW} FROM {t} WHERE key = %s", (key,)
                ).fetchone()
                if row is None or row[1] <= 0:
                    continue  # released or expired in between: try again
                return Claim("done") if row[0] else Claim("busy", float(row[1]))

    def complete(self, key: str, token: str, ttl: float) -> bool:
        t = self.table
        with self.connection() as conn:
            row = conn.execute(
                f"WITH prev AS (SELECT done, token FROM {t} WHERE key = %s) "
                f"INSERT INTO {t} (key, done, token, expires_at) VALUES (%s, true, '', "
                f"{_NOW} + %s) ON CONFLICT (key) DO UPDATE SET done = true, token = '', "
                "expires_at = EXCLUDED.expires_at "
                "RETURNING (SELECT NOT prev.done AND prev.token = %s FROM prev)",
                (key, key, ttl, token),
            ).fetchone()
        return bool(row and row[0])

    def release(self, key: str, token: str) -> None:
        with self.connection() as conn:
            conn.execute(
                f"DELETE FROM {self.table} WHERE key = %s AND NOT done AND token = %s",
                (key, token),
            )

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
