"""The two sides of every benchmark: mqkit itself and the backend's raw client.

Both implement :class:`BenchClient`, so one runner measures both in the same run. Adapters
register their raw-client baseline in the ``mqkit.bench`` entry-point group under their URL
scheme (``factory(url) -> BenchClient``); the SQLite baseline is built in.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from mqkit.backends.sqlite import GC_EVERY, LEASE, SCHEMA, collect
from mqkit.client import Broker, Consumer, Producer, connect
from mqkit.config import BrokerURL, parse_url
from mqkit.errors import ConfigError
from mqkit.message import new_message_id

GROUP = "mqkit.bench"

#: Rows leased at a time and their visibility timeout: the SQLite backend's defaults.
PREFETCH, VISIBILITY = 32, 30.0

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


class AsyncMqkitClient:
    """The same workload through ``mqkit.aio`` (``mqkit bench --api async``): each client runs
    its own event loop in a thread, and each ``produce``/``consume`` call is one coroutine on
    it, so every message goes through the async API (one thread hand-off per call, not per
    message, on the benchmark's side)."""

    def __init__(self, url: str) -> None:
        import asyncio

        from mqkit import aio

        self._asyncio = asyncio
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mqkit-bench-loop", daemon=True
        )
        self._thread.start()
        self._broker: aio.AsyncBroker = self._call(aio.connect(url, serializer="bytes"))
        self._consumer: aio.AsyncConsumer | None = None
        self._producer: aio.AsyncProducer | None = None

    def _call(self, work: Any) -> Any:
        async def run() -> Any:
            return await work

        return self._asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        self._consumer = self._call(self._broker.consumer(topics, group=group))

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        async def go() -> None:
            if self._producer is None:
                self._producer = await self._broker.producer()
            send = self._producer.send
            for body in bodies:
                await send(topic, body)
            await self._producer.flush()

        self._call(go())

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        consumer = self._consumer
        assert consumer is not None, "subscribe first"

        async def go() -> None:
            while not until():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                message = await consumer.receive(timeout=min(remaining, 0.2))
                if message is None:
                    continue
                on_body(message.body)
                await message.ack()

        self._call(go())

    def close(self) -> None:
        try:
            self._call(self._broker.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


class RawSqliteClient:
    """Plain ``sqlite3`` on mqkit's own schema and statements, without mqkit's Python layer.

    The same durable work as the embedded backend: a message row (id, key, headers, time) that
    the schema's trigger fans out to every subscribed group's queue, leases that count attempts
    and honour per-key order, an ack that deletes the group's row in its own transaction. A
    hand-written queue with fewer guarantees (one table, no ids, keys or attempts) writes about
    twice as fast; that difference is the price of those guarantees, not of mqkit, so it is not
    the baseline. Producing commits batches of up to 1,000 rows, sooner when bodies come slowly;
    consuming deletes the message rows no group needs every ``GC_EVERY`` acks, as mqkit does.
    """

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
        self._topics: tuple[str, ...] = ()
        self._group = ""
        self._token = secrets.token_hex(8)

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        self._topics, self._group = tuple(topics), group
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany(
            "INSERT OR IGNORE INTO subscriptions (topic, grp) VALUES (?, ?)",
            [(t, group) for t in topics],
        )
        self._conn.execute("COMMIT")

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        batch: list[tuple[str, str, None, str, bytes, float]] = []
        started = time.monotonic()
        for body in bodies:
            if not batch:
                started = time.monotonic()
            batch.append((topic, new_message_id(), None, "", body, time.time()))
            if len(batch) >= 1000 or time.monotonic() - started > 0.001:
                self._insert(batch)
                batch = []
        if batch:
            self._insert(batch)

    def _insert(self, rows: list[tuple[str, str, None, str, bytes, float]]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany(
            "INSERT INTO messages (topic, id, key, headers, body, ts) VALUES (?,?,?,?,?,?)", rows
        )
        self._conn.execute("COMMIT")

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        conn, group, token = self._conn, self._group, self._token
        lease = LEASE.format(topics=",".join("?" * len(self._topics)))
        acks = 0
        while not until() and time.monotonic() < deadline:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            seqs = [
                row[0] for row in conn.execute(lease, (group, *self._topics, now, token, now, 32))
            ]
            rows: list[tuple[Any, ...]] = []
            if seqs:
                marks = ",".join("?" * len(seqs))
                conn.execute(
                    f"UPDATE queue SET attempts = attempts + 1, visible_at = ?, lease = ? "
                    f"WHERE grp = ? AND seq IN ({marks})",
                    (now + VISIBILITY, token, group, *seqs),
                )
                rows = conn.execute(  # what a message carries: id, key, headers, time
                    f"SELECT seq, topic, id, key, headers, body, ts FROM messages "
                    f"WHERE seq IN ({marks}) ORDER BY seq",
                    seqs,
                ).fetchall()
            conn.execute("COMMIT")
            if not rows:
                time.sleep(0.001)
                continue
            for seq, _topic, _id, _key, _headers, body, _ts in rows:
                on_body(body)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "DELETE FROM queue WHERE grp = ? AND seq = ? AND lease = ?", (group, seq, token)
                )
                acks += 1
                if acks % GC_EVERY == 0:  # drop message rows no group needs, as mqkit does
                    collect(conn)
                conn.execute("COMMIT")

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
