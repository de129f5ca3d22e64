"""The outbox in PostgreSQL (psycopg 3): the application's own database.

The application writes rows with its own connection (or cursor), inside its own transaction. A
statement trigger on the table calls ``pg_notify`` for every insert; PostgreSQL delivers it at
commit and drops it on rollback, so a relay ``LISTEN``-ing wakes exactly when rows become
visible and otherwise only looks every ``poll_interval`` (a lost notification costs latency,
never a message).

Several relays on one table: a claim runs in a short transaction that first takes a
transaction-level advisory lock of the table (claims are serialized; publishing is not) and
leases rows ``FOR UPDATE SKIP LOCKED``, never rows of a key another live lease holds. Leases use
the server's clock, so relays on machines with different clocks agree.

Order: ids come from an identity column, drawn at insert time. Rows of one key written by
transactions that commit one after the other are published in that order; two transactions
that write the same key *concurrently* have no order between them (the one that commits first
may get the later id).
"""

from __future__ import annotations

import importlib
import threading
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Unpack

from mqkit.errors import ConfigError
from mqkit.helpers.outbox.base import (
    DEFAULT_TABLE,
    INSERT_COLUMNS,
    PARKED,
    PARKED_UNTIL,
    ROW_COLUMNS,
    Encoder,
    OutboxRow,
    SendFields,
    SqlAlchemy,
    check_table,
    driver_connection,
    row_of,
)
from mqkit.serialization import Serializer

if TYPE_CHECKING:
    import psycopg

_NOW = "extract(epoch from clock_timestamp())"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {t} (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       text NOT NULL,
    topic            text NOT NULL,
    msg_key          text,
    body             bytea NOT NULL,
    headers          text NOT NULL,
    content_type     text,
    content_encoding text,
    correlation_id   text,
    reply_to         text,
    created_at       double precision NOT NULL,
    lease_token      text NOT NULL DEFAULT '',
    lease_until      double precision NOT NULL DEFAULT 0,
    sent_at          double precision
);
CREATE INDEX IF NOT EXISTS {t}_unsent ON {t} (id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS {t}_key ON {t} (msg_key, id) WHERE sent_at IS NULL;
CREATE OR REPLACE FUNCTION {t}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('{t}', ''); RETURN NULL; END $$;
DROP TRIGGER IF EXISTS {t}_notify ON {t};
CREATE TRIGGER {t}_notify AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify();
"""

_CLAIM = f"""
UPDATE {{t}} SET lease_token = %(token)s, lease_until = {_NOW} + %(lease)s
WHERE id IN (
    SELECT id FROM {{t}} WHERE sent_at IS NULL AND lease_until <= {_NOW}
    AND (msg_key IS NULL OR msg_key NOT IN (SELECT msg_key FROM {{t}} WHERE sent_at IS NULL
         AND lease_until > {_NOW} AND msg_key IS NOT NULL))
    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING {ROW_COLUMNS}
"""


def _psycopg() -> Any:
    try:
        return importlib.import_module("psycopg")
    except ImportError:
        raise ConfigError("PostgresOutbox needs psycopg 3: pip install 'mqkit[postgres]'") from None


class PostgresOutbox:
    """An outbox table in the PostgreSQL database at ``dsn``, the application's database.

    ``outbox.send(conn, topic, value, key=..., headers=...)`` inserts the message through the
    application's psycopg connection (or cursor), inside its open transaction: the message
    exists if and only if that transaction commits. The table (and its notify trigger) is
    created here unless ``create=False`` (then :meth:`create_table`, or your migrations, with
    :meth:`schema`). ``serializer`` encodes values as a producer would.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = DEFAULT_TABLE,
        serializer: str | Serializer | None = None,
        create: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        self._pg = _psycopg()
        self.dsn = dsn
        self.table = check_table(table)
        self.where = f"postgresql table {table}"
        self._encoder = Encoder(serializer)
        self._timeout = connect_timeout
        self._insert = (
            f"INSERT INTO {table} ({INSERT_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        # One advisory lock id per table name: claims on one table are serialized.
        self._lock_id = zlib.crc32(f"mqkit-outbox:{table}".encode()) - 2**31
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        if create:
            self.create_table()

    def schema(self) -> str:
        """The SQL that creates the table, its indexes and its notify trigger."""
        return _SCHEMA.format(t=self.table)

    def create_table(self, conn: psycopg.Connection[Any] | None = None) -> None:
        """Create the table, indexes and trigger if missing (in their own transaction)."""
        if conn is None:
            with self._connect() as own:
                self.create_table(own)
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
            exists = conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()
            if exists is None or exists[0] is None:
                conn.execute(self.schema())

    # -- the application's side ------------------------------------------------------------

    def send(
        self,
        conn: psycopg.Connection[Any] | psycopg.Cursor[Any] | SqlAlchemy,
        topic: str,
        value: Any,
        **fields: Unpack[SendFields],
    ) -> str:
        """Write the message in ``conn``'s transaction; return its message id (the id every
        publication of it carries). Nothing is published before that transaction commits."""
        encoded = self._encoder.encode(topic, value, **fields)
        driver_connection(conn).execute(self._insert, encoded.params(time.time()))
        return encoded.message_id

    async def send_async(
        self,
        conn: psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any],
        topic: str,
        value: Any,
        **fields: Unpack[SendFields],
    ) -> str:
        """:meth:`send` through psycopg's ``AsyncConnection`` (or ``AsyncCursor``)."""
        encoded = self._encoder.encode(topic, value, **fields)
        await conn.execute(self._insert, encoded.params(time.time()))
        return encoded.message_id

    # -- the relay's side ------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn: psycopg.Connection[Any] = self._pg.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self._timeout))
            )
        except self._pg.OperationalError as exc:
            raise ConfigError(f"cannot reach PostgreSQL for the outbox: {exc}") from exc
        return conn

    def _run(self, work: Any) -> Any:
        """``work(conn)`` on the relay's connection (made again if it broke)."""
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            return work(self._conn)

    def claim(self, token: str, limit: int, lease: float) -> list[OutboxRow]:
        def take(conn: psycopg.Connection[Any]) -> list[OutboxRow]:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
                found = conn.execute(
                    _CLAIM.format(t=self.table), {"token": token, "lease": lease, "limit": limit}
                ).fetchall()
            return sorted((row_of(row) for row in found), key=lambda row: row.id)

        rows: list[OutboxRow] = self._run(take)
        return rows

    def finish(self, ids: Sequence[int], token: str, retention: float) -> int:
        t = self.table

        def done(conn: psycopg.Connection[Any]) -> int:
            if retention > 0:
                with conn.transaction():
                    count = conn.execute(
                        f"UPDATE {t} SET sent_at = {_NOW}, lease_token = '' "
                        "WHERE id = ANY(%s) AND lease_token = %s AND sent_at IS NULL",
                        (list(ids), token),
                    ).rowcount
                    conn.execute(f"DELETE FROM {t} WHERE sent_at <= {_NOW} - %s", (retention,))
                return count
            return conn.execute(
                f"DELETE FROM {t} WHERE id = ANY(%s) AND lease_token = %s AND sent_at IS NULL",
                (list(ids), token),
            ).rowcount

        count: int = self._run(done)
        return count

    def release(self, ids: Sequence[int], token: str) -> None:
        self._run(
            lambda conn: conn.execute(
                f"UPDATE {self.table} SET lease_token = '', lease_until = 0 "
                "WHERE id = ANY(%s) AND lease_token = %s",
                (list(ids), token),
            )
        )

    def park(self, ids: Sequence[int], token: str) -> None:
        self._run(
            lambda conn: conn.execute(
                f"UPDATE {self.table} SET lease_token = %s, lease_until = %s "
                "WHERE id = ANY(%s) AND lease_token = %s",
                (PARKED, PARKED_UNTIL, list(ids), token),
            )
        )

    def pending(self) -> int:
        row = self._run(
            lambda conn: conn.execute(
                f"SELECT count(*) FROM {self.table} "
                f"WHERE sent_at IS NULL AND lease_token <> '{PARKED}'"
            ).fetchone()
        )
        return int(row[0])

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Until a notification of a commit (``LISTEN``), ``timeout`` or ``stop``."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                if self._listen is None or self._listen.closed or self._listen.broken:
                    self._listen = self._connect()
                    self._listen.execute(f"LISTEN {self.table}")
                    return  # notifications may have been missed meanwhile: look now
                for _ in self._listen.notifies(timeout=min(left, 0.5), stop_after=1):
                    return
            except (self._pg.Error, ConfigError):
                if self._listen is not None:
                    self._listen.close()
                    self._listen = None
                stop.wait(min(left, 1.0))

    def close(self) -> None:
        with self._lock:
            for conn in (self._conn, self._listen):
                if conn is not None:
                    conn.close()
            self._conn = self._listen = None

    def __repr__(self) -> str:
        return f"PostgresOutbox(table={self.table!r})"
