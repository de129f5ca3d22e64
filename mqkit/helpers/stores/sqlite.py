"""The SQLite store: durable, shared by the processes of one machine."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

from mqkit.helpers.stores.base import Claim

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    key        TEXT PRIMARY KEY,
    done       INTEGER NOT NULL,
    token      TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {table}_expiry ON {table} (expires_at);
"""


class SqliteStore:
    """Identities in a SQLite file: durable, shared by the processes of one machine.

    WAL mode with ``synchronous=NORMAL`` by default: a record survives a crash of the process,
    and a power loss may forget the last commits (``synchronous="full"`` keeps those too).
    Expired records are swept every ``sweep_every`` claims.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = "mqkit_idempotency",
        synchronous: Literal["normal", "full"] = "normal",
        busy_timeout: float = 30.0,
        sweep_every: int = 1000,
    ) -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"table name {table!r} must be letters, digits and _")
        self.path = str(path)
        self._table = table
        self._sweep_every = sweep_every
        self._ops = 0
        self._lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._conn.executescript(_SQLITE_SCHEMA.format(table=table))

    def claim(self, key: str, token: str, lease: float) -> Claim:
        t = self._table
        with self._lock:
            now = time.time()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    f"SELECT done, expires_at FROM {t} WHERE key = ?", (key,)
                ).fetchone()
                if row is None or row[1] <= now:
                    self._conn.execute(
                        f"INSERT OR REPLACE INTO {t} (key, done, token, expires_at) "
                        "VALUES (?, 0, ?, ?)",
                        (key, token, now + lease),
                    )
                    claim = Claim("claimed")
                elif row[0]:
                    claim = Claim("done")
                else:
                    claim = Claim("busy", row[1] - now)
                self._ops += 1
                if self._ops % self._sweep_every == 0:
                    self._conn.execute(f"DELETE FROM {t} WHERE expires_at <= ?", (now,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return claim

    def complete(self, key: str, token: str, ttl: float) -> bool:
        t = self._table
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                held = self._conn.execute(
                    f"SELECT 1 FROM {t} WHERE key = ? AND done = 0 AND token = ?", (key, token)
                ).fetchone()
                self._conn.execute(
                    f"INSERT OR REPLACE INTO {t} (key, done, token, expires_at) "
                    "VALUES (?, 1, '', ?)",
                    (key, time.time() + ttl),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return held is not None

    def release(self, key: str, token: str) -> None:
        with self._lock:
            self._conn.execute(
                f"DELETE FROM {self._table} WHERE key = ? AND done = 0 AND token = ?",
                (key, token),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
