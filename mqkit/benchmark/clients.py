"""The two sides of every benchmark: mqkit itself and the backend's raw client.

Both implement :class:`BenchClient`, so one runner measures both in the same run. Adapters
register their raw-client baseline in the ``mqkit.bench`` entry-point group under their URL
scheme (``factory(url) -> BenchClient``); the SQLite baseline is built in.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from mqkit.client import Broker, Consumer, Producer, connect
from mqkit.config import BrokerURL, parse_url
from mqkit.errors import ConfigError

GROUP = "mqkit.bench"

OnBody = Callable[[bytes], None]


class BenchClient(Protocol):
    """One connection; each benchmark thread makes its own."""

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        """Create the group's subscription (and start consuming if that is how the client works)."""

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        """Send every body, returning once the backend confirmed all of them."""

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        """Receive and ack, calling ``on_body`` for each, until ``until()`` or the deadline."""

    def close(self) -> None: ...


ClientFactory = Callable[[], BenchClient]


class MqkitClient:
    """The workload through mqkit's public interface, raw bytes (no serialization cost)."""

    def __init__(self, url: str) -> None:
        self._broker: Broker = connect(url, serializer="bytes")
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        self._consumer = self._broker.consumer(topics, group=group)

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        if self._producer is None:
            self._producer = self._broker.producer()
        send = self._producer.send
        for body in bodies:
            send(topic, body)
        self._producer.flush()

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        assert self._consumer is not None, "subscribe first"
        receive = self._consumer.receive
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            message = receive(timeout=min(remaining, 0.2))
            if message is None:
                continue
            on_body(message.body)
            message.ack()

    def close(self) -> None:
        self._broker.close()


class RawSqliteClient:
    """A hand-written queue on ``sqlite3`` doing the same durable work as mqkit's backend.

    Producing inserts batches in one transaction each; consuming leases a batch with one
    UPDATE and deletes each message in its own transaction when acked, like mqkit does.
    """

    _lock = threading.Lock()

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "grp TEXT, topic TEXT, body BLOB, lease TEXT)"
        )
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_subs (topic TEXT, grp TEXT, UNIQUE (topic, grp))"
        )
        self._topics: tuple[str, ...] = ()
        self._group = ""
        self._groups: dict[str, list[str]] = {}
        self._token = str(id(self))

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        self._topics, self._group = tuple(topics), group
        with RawSqliteClient._lock:
            self._conn.executemany(
                "INSERT OR IGNORE INTO raw_subs VALUES (?, ?)", [(t, group) for t in topics]
            )

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        groups = [
            row[0]
            for row in self._conn.execute("SELECT grp FROM raw_subs WHERE topic = ?", (topic,))
        ]
        batch: list[tuple[str, str, bytes]] = []
        started = time.monotonic()
        for body in bodies:
            if not batch:
                started = time.monotonic()
            batch.extend((g, topic, body) for g in groups)
            # Commit per 1000 rows, or sooner when bodies come slowly (a paced producer).
            if len(batch) >= 1000 or time.monotonic() - started > 0.001:
                self._insert(batch)
                batch = []
        if batch:
            self._insert(batch)

    def _insert(self, rows: list[tuple[str, str, bytes]]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany("INSERT INTO raw_queue (grp, topic, body) VALUES (?, ?, ?)", rows)
        self._conn.execute("COMMIT")

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        marks = ",".join("?" * len(self._topics))
        while not until() and time.monotonic() < deadline:
            self._conn.execute("BEGIN IMMEDIATE")
            rows = self._conn.execute(
                f"UPDATE raw_queue SET lease = ? WHERE seq IN (SELECT seq FROM raw_queue "
                f"WHERE grp = ? AND lease IS NULL AND topic IN ({marks}) ORDER BY seq LIMIT 32) "
                "RETURNING seq, body",
                (self._token, self._group, *self._topics),
            ).fetchall()
            self._conn.execute("COMMIT")
            if not rows:
                time.sleep(0.001)
                continue
            for seq, body in sorted(rows):
                on_body(body)
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute("DELETE FROM raw_queue WHERE seq = ?", (seq,))
                self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


def raw_factory(url: str) -> ClientFactory | None:
    """The raw-client baseline for ``url``'s backend, or ``None`` if none is registered."""
    parsed: BrokerURL = parse_url(url)
    if parsed.scheme == "sqlite":
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        raw_path = str(Path(path).with_suffix(".raw.db"))
        return lambda: RawSqliteClient(raw_path)
    for entry in entry_points(group=GROUP):
        if entry.name == parsed.scheme:
            try:
                make = entry.load()
            except ImportError as exc:
                raise ConfigError(f"raw benchmark client for {parsed.scheme}://: {exc}") from exc
            return lambda: make(parsed)
    return None
