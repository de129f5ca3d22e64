"""The outbox in a SQLite database (stdlib ``sqlite3``): the application's own file.

The application writes rows with its own connection, inside its own transaction; the relay
opens a connection of its own to the same file. SQLite has one writer at a time, so a claim is
one ``BEGIN IMMEDIATE`` transaction (no two relays claim at once) and ids grow in commit order.
The relay notices commits of other connections through ``PRAGMA data_version`` (a read of a
counter in shared memory, no I/O), so it reacts within ``watch_interval`` without polling the
table. WAL mode (``PRAGMA journal_mode=WAL``, the application's choice) lets the relay read
while the application writes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {t} (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id       TEXT NOT NULL,
    topic            TEXT NOT NULL,
    msg_key          TEXT,
    body             BLOB NOT NULL,
    headers          TEXT NOT NULL,
    content_type     TEXT,
    content_encoding TEXT,
    correlation_id   TEXT,
    reply_to         TEXT,
    created_at       REAL NOT NULL,
    lease_token      TEXT NOT NULL DEFAULT '',
    lease_until      REAL NOT NULL DEFAULT 0,
    sent_at          REAL
);
CREATE INDEX IF NOT EXISTS {t}_key ON {t} (msg_key, id);
CREATE INDEX IF NOT EXISTS {t}_sent ON {t} (sent_at);
"""

#: Unsent, unleased rows of keys that no live lease holds, oldest first.
_CLAIMABLE = (
    "SELECT {cols} FROM {t} WHERE sent_at IS NULL AND lease_until <= :now "
    "AND (msg_key IS NULL OR msg_key NOT IN (SELECT msg_key FROM {t} WHERE sent_at IS NULL "
    "AND lease_until > :now AND msg_key IS NOT NULL)) ORDER BY id LIMIT :limit"
)


class SqliteOutbox:
    """An outbox table in the SQLite database at ``path``, the application's database.

    ``outbox.send(conn, topic, value, key=..., headers=...)`` inserts the message through the
    application's ``sqlite3`` connection (or cursor), inside its open transaction: the message
    exists if and only if that transaction commits. The table is created here (``create=False``
    leaves that to :meth:`create_table`). ``serializer`` encodes values as a producer would.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = DEFAULT_TABLE,
        serializer: str | Serializer | None = None,
        create: bool = True,
        busy_timeout: float = 30.0,
        watch_interval: float = 0.05,
    ) -> None:
        self.path = str(path)
        self.table = check_table(table)
        self.where = f"sqlite:{self.path} table {table}"
        self._encoder = Encoder(serializer)
        self._busy_timeout = busy_timeout
        self._watch = watch_interval
        self._insert = (
            f"INSERT INTO {table} ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        if create:
            with self._connection() as conn:
                self.create_table(conn)

    def create_table(self, conn: sqlite3.Connection) -> None:
        """Create the table and its indexes if missing, in ``conn``'s transaction (if one is
        open: SQLite's DDL is transactional; else each statement commits at once)."""
        for statement in _SCHEMA.format(t=self.table).split(";"):
            if statement.strip():
                conn.execute(statement)

    # -- the application's side ------------------------------------------------------------

    def send(
        self,
        conn: sqlite3.Connection | sqlite3.Cursor | SqlAlchemy,
        topic: str,
        value: Any,
        **fields: Unpack[SendFields],
    ) -> str:
        """Write the message in ``conn``'s transaction; return its message id (the id every
        publication of it carries). Nothing is published before that transaction commits."""
        encoded = self._encoder.encode(topic, value, **fields)
        driver_connection(conn).execute(self._insert, encoded.params(time.time()))
        return encoded.message_id

    # -- the relay's side ------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        return self._conn

    def _write(self, work: Any) -> Any:
        """``work(conn)`` in one ``BEGIN IMMEDIATE`` transaction of the relay's connection."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

    def claim(self, token: str, limit: int, lease: float) -> list[OutboxRow]:
        def take(conn: sqlite3.Connection) -> list[OutboxRow]:
            # What was committed up to now is seen by this claim: wait() wakes for later ones.
            self._version = conn.execute("PRAGMA data_version").fetchone()[0]
            now = time.time()
            found = conn.execute(
                _CLAIMABLE.format(cols=ROW_COLUMNS, t=self.table),
                {"now": now, "limit": limit},
            ).fetchall()
            if found:
                conn.executemany(
                    f"UPDATE {self.table} SET lease_token = ?, lease_until = ? WHERE id = ?",
                    [(token, now + lease, row[0]) for row in found],
                )
            return [row_of(row) for row in found]

        rows: list[OutboxRow] = self._write(take)
        return rows

    def finish(self, ids: Sequence[int], token: str, retention: float) -> int:
        t = self.table

        def done(conn: sqlite3.Connection) -> int:
            now = time.time()
            marks = [(i, token) for i in ids]
            if retention > 0:
                cursor = conn.executemany(
                    f"UPDATE {t} SET sent_at = {now!r}, lease_token = '' "
                    "WHERE id = ? AND lease_token = ? AND sent_at IS NULL",
                    marks,
                )
                count = cursor.rowcount
                conn.execute(f"DELETE FROM {t} WHERE sent_at <= ?", (now - retention,))
                return count
            return conn.executemany(
                f"DELETE FROM {t} WHERE id = ? AND lease_token = ? AND sent_at IS NULL", marks
            ).rowcount

        count: int = self._write(done)
        return count

    def release(self, ids: Sequence[int], token: str) -> None:
        self._write(
            lambda conn: conn.executemany(
                f"UPDATE {self.table} SET lease_token = '', lease_until = 0 "
                "WHERE id = ? AND lease_token = ?",
                [(i, token) for i in ids],
            )
        )

    def park(self, ids: Sequence[int], token: str) -> None:
        self._write(
            lambda conn: conn.executemany(
                f"UPDATE {self.table} SET lease_token = ?, lease_until = ? "
                "WHERE id = ? AND lease_token = ?",
                [(PARKED, PARKED_UNTIL, i, token) for i in ids],
            )
        )

    def pending(self) -> int:
        with self._lock:
            row = (
                self._connection()
                .execute(
                    f"SELECT count(*) FROM {self.table} "
                    f"WHERE sent_at IS NULL AND lease_token <> '{PARKED}'"
                )
                .fetchone()
            )
        return int(row[0])

    def wait(self, timeout: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            with self._lock:
                version = self._connection().execute("PRAGMA data_version").fetchone()[0]
            if self._version is not None and version != self._version:
                self._version = version
                return
            self._version = version
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(self._watch, left))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SqliteOutbox({self.path!r}, table={self.table!r})"
