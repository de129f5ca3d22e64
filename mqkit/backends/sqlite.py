"""The embedded queue engine: durable consumer groups in one SQLite database.

Tables: ``messages`` holds each body once; ``subscriptions`` lists the groups of each topic; a
trigger fans every new message out into ``queue``, one row per subscribed group. A consumer
*leases* rows (``lease`` token, ``visible_at`` deadline), deletes them on ack and releases them
on nack or close. A lease that runs out (its consumer died) makes the row visible again, so an
unacked message is always delivered again: at-least-once across killed processes.

Per-key order: a keyed row is only leased once no earlier row of the same group, topic and key
is left, unless that earlier row is leased by the same consumer; so one key is never processed
by two consumers at once, and a nacked message comes back before its key's successors.

``memory://`` runs the same engine on an in-process database (see :mod:`mqkit.backends.memory`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mqkit.adapter import (
    CONSUMER,
    PRODUCER,
    BackendBase,
    BrokerURL,
    ConsumerBase,
    Deadline,
    Delivery,
    Features,
    OutgoingMessage,
    ProducerBase,
    Settings,
    envelope,
    option,
)
from mqkit.errors import BrokerUnavailable, ClosedError, ConfigError, DeliveryTimeout, MqkitError

log = logging.getLogger("mqkit.sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    id      TEXT NOT NULL,
    key     TEXT,
    headers TEXT NOT NULL,
    body    BLOB NOT NULL,
    ts      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL,
    grp   TEXT NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (
    grp        TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    topic      TEXT NOT NULL,
    key        TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL DEFAULT 0,
    lease      TEXT,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queue_key ON queue (grp, topic, key, seq) WHERE key IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS fanout AFTER INSERT ON messages BEGIN
    INSERT INTO queue (grp, seq, topic, key)
    SELECT grp, NEW.seq, NEW.topic, NEW.key FROM subscriptions WHERE topic = NEW.topic;
END;
"""

LEASE = """
SELECT q.seq FROM queue q
WHERE q.grp = ? AND q.topic IN ({topics}) AND q.visible_at <= ?
  AND (q.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM queue p
        WHERE p.grp = q.grp AND p.topic = q.topic AND p.key = q.key AND p.seq < q.seq
          AND NOT (p.lease IS ? AND p.visible_at > ?)))
ORDER BY q.seq LIMIT ?
"""

#: Acks between two sweeps of messages that no group needs any more.
GC_EVERY = 2000


def collect(conn: sqlite3.Connection) -> None:
    """Delete messages that no group's queue refers to any more."""
    groups = [row[0] for row in conn.execute("SELECT DISTINCT grp FROM subscriptions")]
    oldest = [
        conn.execute("SELECT MIN(seq) FROM queue WHERE grp = ?", (g,)).fetchone()[0] for g in groups
    ]
    pending = [seq for seq in oldest if seq is not None]
    if pending:
        conn.execute("DELETE FROM messages WHERE seq < ?", (min(pending),))
    else:
        conn.execute("DELETE FROM messages")


_STANDARD = ("content_type", "content_encoding", "correlation_id", "reply_to")


def pack_metadata(message: OutgoingMessage) -> str:
    """The ``headers`` column: a JSON object of the text headers, their types
    (:func:`~mqkit.envelope.flatten_headers`) and the standard fields that are set."""
    doc: dict[str, str] = {}
    if message.headers:
        flat, types = envelope.flatten_headers(message.headers, binary="base64")
        doc.update(flat)  # type: ignore[arg-type]  # base64: every value is str
        if types:
            doc[envelope.HEADER_TYPES] = types
    for name in _STANDARD:
        value = getattr(message, name)
        if value is not None:
            doc[name.replace("_", "-")] = value
    return json.dumps(doc, ensure_ascii=False) if doc else ""


def unpack_delivery(column: str, **fields: Any) -> Delivery:
    """A :class:`Delivery` from a row, its ``headers`` column read by :func:`pack_metadata`'s
    rule (a user header never has a standard field's name: the core refuses those)."""
    if not column:
        return Delivery(headers={}, **fields)
    doc = json.loads(column)
    standard = {name: doc.pop(name.replace("_", "-"), None) for name in _STANDARD}
    types = doc.pop(envelope.HEADER_TYPES, None)
    return Delivery(headers=envelope.restore_headers(doc, types), **standard, **fields)


class Busy(Exception):
    """A ``wait=False`` transaction would have had to wait for a lock."""


class Store:
    """One SQLite connection shared by every producer and consumer of a process.

    SQLite serializes writers anyway; one connection behind one lock keeps that simple, and
    the condition lets in-process consumers wake as soon as a local producer commits.
    """

    def __init__(self, target: str, *, memory: bool, busy_timeout: float, synchronous: str):
        self.target = target
        self.memory = memory
        self.pid = os.getpid()
        self.users = 0
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        #: Bumped whenever rows become available in-process, so waiting consumers wake at once.
        self.version = 0
        self.busy_ms = int(busy_timeout * 1000)
        self._busy_on = True  # the connection's busy_timeout is busy_ms (else 0)
        self._acks = 0
        try:
            if not memory:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                ":memory:" if memory else target,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            if not memory:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            with self.transaction() as conn:
                conn.executescript("BEGIN IMMEDIATE;" + SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(
                f"cannot open the SQLite queue at {target!r}: {exc}; check the path is a "
                "writable file that is either new or a mqkit database"
            ) from None

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: take the write lock up front (no upgrade deadlock).

        ``wait=False``: raise :class:`Busy` instead of waiting, for the store's lock (another
        thread's transaction) or the database's (another process's), so an event loop can
        try it inline and hand it to a thread when busy.
        """
        if not self.lock.acquire(blocking=wait):
            raise Busy
        try:
            conn = self.conn
            begun = False
            try:
                if not conn.in_transaction:
                    if wait or self.memory:
                        self._busy_wait(True)
                        conn.execute("BEGIN IMMEDIATE")
                    else:
                        self._busy_wait(False)
                        try:
                            conn.execute("BEGIN IMMEDIATE")
                        except sqlite3.OperationalError as exc:
                            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                                raise Busy from None
                            raise
                    begun = True
                yield conn
                if begun:
                    conn.execute("COMMIT")
            except BaseException as exc:
                if begun and conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise BrokerUnavailable(
                        f"SQLite queue {self.target!r} is unavailable: {exc}"
                    ) from exc
                raise
        finally:
            self.lock.release()

    def _busy_wait(self, on: bool) -> None:
        """SQLite's wait for another process's lock: ``busy_timeout`` or none (under
        ``lock``). Switched only when it changes, as a run of inline acks is common."""
        if on != self._busy_on:
            self.conn.execute(f"PRAGMA busy_timeout = {self.busy_ms if on else 0}")
            self._busy_on = on

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection under the store's lock, waiting for other processes' locks as
        configured: for statements outside :meth:`transaction`."""
        with self.lock:
            self._busy_wait(True)
            yield self.conn

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # -- producing ---------------------------------------------------------------------------

    def append(self, batch: Sequence[OutgoingMessage]) -> None:
        rows = [
            (
                m.topic,
                m.id,
                m.key,
                pack_metadata(m),
                m.body,
                m.timestamp,
            )
            for m in batch
        ]
        with self.changed:
            with self.transaction() as conn:
                conn.executemany(
                    "INSERT INTO messages (topic, id, key, headers, body, ts) VALUES (?,?,?,?,?,?)",
                    rows,
                )
            self.version += 1
            self.changed.notify_all()

    # -- consuming ---------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO subscriptions (topic, grp) VALUES (?, ?)",
                [(t, group) for t in topics],
            )

    def lease(
        self,
        group: str,
        topics: Sequence[str],
        token: str,
        visibility: float,
        limit: int,
        *,
        wait: bool = True,
    ) -> list[Delivery]:
        now = time.time()
        sql = LEASE.format(topics=",".join("?" * len(topics)))
        with self.transaction(wait=wait) as conn:
            seqs = [row[0] for row in conn.execute(sql, (group, *topics, now, token, now, limit))]
            if not seqs:
                return []
            marks = ",".join("?" * len(seqs))
            attempts = dict(
                conn.execute(
                    f"UPDATE queue SET attempts = attempts + 1, visible_at = ?, lease = ? "
                    f"WHERE grp = ? AND seq IN ({marks}) RETURNING seq, attempts",
                    (now + visibility, token, group, *seqs),
                ).fetchall()
            )
            rows = conn.execute(
                f"SELECT seq, topic, id, key, headers, body, ts FROM messages "
                f"WHERE seq IN ({marks}) ORDER BY seq",
                seqs,
            ).fetchall()
        return [
            unpack_delivery(
                headers,
                topic=topic,
                body=bytes(body),
                key=key,
                id=mid,
                timestamp=ts,
                attempt=attempts[seq],
                handle=(seq, token, now + visibility),
            )
            for seq, topic, mid, key, headers, body, ts in rows
        ]

    def ack(self, group: str, seq: int, token: str, *, wait: bool = True) -> bool:
        """Delete an acked row; ``False`` if its lease ran out. ``wait=False``: see
        :meth:`transaction`."""
        with self.transaction(wait=wait) as conn:
            done = conn.execute(
                "DELETE FROM queue WHERE grp = ? AND seq = ? AND lease = ?", (group, seq, token)
            ).rowcount
            self._acks += 1
            if self._acks % GC_EVERY == 0:
                collect(conn)
        return done == 1

    def ack_many(self, group: str, rows: Sequence[tuple[int, str]]) -> list[int]:
        """Delete acked rows (``(seq, lease)`` each) in one transaction; the seqs whose lease
        had run out."""
        late: list[int] = []
        with self.transaction() as conn:
            for seq, token in rows:
                done = conn.execute(
                    "DELETE FROM queue WHERE grp = ? AND seq = ? AND lease = ?",
                    (group, seq, token),
                ).rowcount
                if done != 1:
                    late.append(seq)
            before = self._acks
            self._acks += len(rows)
            if self._acks // GC_EVERY != before // GC_EVERY:
                collect(conn)
        return late

    def release(
        self,
        group: str,
        seqs: Sequence[int],
        token: str,
        *,
        delay: float = 0.0,
        uncount: bool = False,
    ) -> None:
        """Give leased rows back: visible after ``delay``; ``uncount`` if never handed out."""
        if not seqs:
            return
        marks = ",".join("?" * len(seqs))
        with self.changed:
            with self.transaction() as conn:
                conn.execute(
                    f"UPDATE queue SET lease = NULL, visible_at = ?, "
                    f"attempts = attempts - ? WHERE grp = ? AND lease = ? AND seq IN ({marks})",
                    (time.time() + delay, 1 if uncount else 0, group, token, *seqs),
                )
            self.version += 1
            self.changed.notify_all()

    def extend(self, group: str, seqs: Sequence[int], token: str, until: float) -> None:
        """Push the deadline of rows still leased by ``token`` to ``until``."""
        marks = ",".join("?" * len(seqs))
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE queue SET visible_at = ? WHERE grp = ? AND lease = ? AND seq IN ({marks})",
                (until, group, token, *seqs),
            )

    def wait_for_change(self, seen: int, timeout: float) -> None:
        """Wait until an in-process change after ``seen``, or ``timeout`` (other processes)."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != seen, timeout)


class SqliteProducer(ProducerBase):
    """Group commit: ``send`` queues, a writer thread commits whatever queued meanwhile."""

    def __init__(self, store: Store, *, max_batch: int = 1000, max_buffer: int = 20000) -> None:
        super().__init__()
        self._store = store
        self._max_batch = max_batch
        self._max_buffer = max_buffer
        self._cv = threading.Condition()
        self._buffer: list[OutgoingMessage] = []
        self._sent = 0
        self._written = 0
        self._error: MqkitError | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="mqkit-sqlite-writer", daemon=True)
        self._thread.start()

    def send(self, message: OutgoingMessage) -> None:
        with self._cv:
            if self._closing:
                raise ClosedError("producer is closed")
            while len(self._buffer) >= self._max_buffer and self._error is None:
                self._cv.wait()
            self._append(message)

    def send_nowait(self, message: OutgoingMessage) -> bool:
        """``send`` unless the buffer is full. ``_cv`` is only held for list operations
        (the writer thread commits outside it), so taking it does not wait on I/O."""
        with self._cv:
            if self._closing:
                raise ClosedError("producer is closed")
            if len(self._buffer) >= self._max_buffer and self._error is None:
                return False
            self._append(message)
            return True

    def _append(self, message: OutgoingMessage) -> None:
        if self._error is not None:
            raise self._error
        self._buffer.append(message)
        self._sent += 1
        if len(self._buffer) == 1:
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._buffer and not self._closing:
                    self._cv.wait()
                if not self._buffer:
                    return
                batch = self._buffer[: self._max_batch]
                del self._buffer[: self._max_batch]
                self._cv.notify_all()
            try:
                self._store.append(batch)
            except Exception as exc:  # surfaced to the caller by send/flush
                with self._cv:
                    self._error = MqkitError(
                        f"writing {len(batch)} message(s) to {self._store.target!r} failed: {exc}"
                    )
                    self._buffer.clear()
                    self._cv.notify_all()
                return
            with self._cv:
                self._written += len(batch)
                self._cv.notify_all()

    def flush(self, timeout: float | None) -> None:
        with self._cv:
            target = self._sent
            done = self._cv.wait_for(
                lambda: self._written >= target or self._error is not None, timeout
            )
            if self._error is not None:
                raise self._error
            if not done:
                raise DeliveryTimeout(
                    f"{target - self._written} message(s) not yet written after {timeout} s"
                )

    def _close(self) -> None:
        try:
            self.flush(None)
        finally:
            with self._cv:
                self._closing = True
                self._cv.notify_all()
            self._thread.join()


class SqliteConsumer(ConsumerBase):
    """Leases up to ``prefetch`` rows at a time and hands them out one by one.

    While the consumer is open, a keeper thread extends its leases (buffered and in flight)
    every third of the visibility timeout, so a slow handler never sees its message handed to
    another member; when the process dies, the keeper dies with it and the leases run out.
    """

    def __init__(
        self,
        store: Store,
        topics: Sequence[str],
        group: str,
        *,
        visibility: float,
        prefetch: int,
        poll_interval: float,
    ) -> None:
        super().__init__()
        self._store = store
        self._topics = tuple(topics)
        self._group = group
        self._visibility = visibility
        self._prefetch = prefetch
        self._poll = poll_interval
        self._token = secrets.token_hex(8)
        self._buffer: deque[Delivery] = deque()
        self._inflight: set[int] = set()
        self._leased: dict[int, float] = {}  # seq -> lease deadline, buffered or in flight
        self._lock = threading.Lock()
        store.subscribe(self._topics, group)
        self._stop = threading.Event()
        self._keeper = threading.Thread(
            target=self._keep_leases, name=f"mqkit-lease-{group}", daemon=True
        )
        self._keeper.start()

    def receive(self, timeout: float | None) -> Delivery | None:
        deadline = Deadline(timeout)
        while True:
            # Leasing under the consumer lock: a nack on another thread sees the whole buffer.
            with self._lock:
                if self._closed:
                    return None
                delivery = self._take()
                if delivery is not None:
                    return delivery
                version = self._store.version
                if self._lease(wait=True):
                    continue
            wait = deadline.remaining(self._poll)
            if deadline.expired or not wait:
                return None
            self._store.wait_for_change(version, wait)

    def _take(self) -> Delivery | None:
        """The next buffered delivery whose lease still holds (under ``_lock``)."""
        while self._buffer:
            delivery = self._buffer.popleft()
            seq = delivery.handle[0]
            if self._leased.get(seq, 0.0) > time.time():
                self._inflight.add(seq)
                return delivery
            self._leased.pop(seq, None)  # ran out while buffered: the group has it
        return None

    def _lease(self, *, wait: bool) -> bool:
        """Lease up to ``prefetch`` rows into the buffer (under ``_lock``); any?"""
        batch = self._store.lease(
            self._group, self._topics, self._token, self._visibility, self._prefetch, wait=wait
        )
        self._buffer.extend(batch)
        self._leased.update((d.handle[0], d.handle[2]) for d in batch)
        return bool(batch)

    def receive_nowait(self) -> Delivery | None:
        """A prefetched delivery, else one leased now if no lock is taken, else ``None``.
        ``_lock`` is held while leasing or extending leases (database I/O), so it is only
        tried, never waited for; the store's and the database's locks likewise."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._closed:
                return None
            delivery = self._take()
            if delivery is None:
                try:
                    self._lease(wait=False)
                except Busy:
                    return None
                delivery = self._take()
            return delivery
        finally:
            self._lock.release()

    def ack_nowait(self, delivery: Delivery) -> bool:
        """``ack`` unless a lock is taken: ``_lock`` (see :meth:`receive_nowait`), the store's
        (another thread's transaction) or the database's (another process writing)."""
        seq, token, _ = delivery.handle
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._inflight.discard(seq)
            self._leased.pop(seq, None)
        finally:
            self._lock.release()
        try:
            done = self._store.ack(self._group, seq, token, wait=False)
        except Busy:
            return False  # ack() does it; forgetting the lease twice is harmless
        if not done:
            self._late_ack(delivery)
        return True

    def _late_ack(self, delivery: Delivery) -> None:
        log.warning(
            "ack of message %s on %r came after its lease ran out; it may be redelivered "
            "(raise visibility_timeout for slow handlers)",
            delivery.id,
            delivery.topic,
        )

    def _keep_leases(self) -> None:
        while not self._stop.wait(self._visibility / 3):
            with self._lock:
                seqs = list(self._leased)
                if not seqs:
                    continue
                until = time.time() + self._visibility
                try:
                    self._store.extend(self._group, seqs, self._token, until)
                except MqkitError as exc:  # retried next round; at worst a redelivery
                    log.warning("could not extend leases of group %r: %s", self._group, exc)
                    continue
                self._leased.update(dict.fromkeys(seqs, until))

    def ack(self, delivery: Delivery) -> None:
        seq, token, _ = delivery.handle
        with self._lock:
            self._inflight.discard(seq)
            self._leased.pop(seq, None)
        if not self._store.ack(self._group, seq, token):
            self._late_ack(delivery)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Every ``ack`` of ``deliveries`` in one transaction."""
        with self._lock:
            for delivery in deliveries:
                seq = delivery.handle[0]
                self._inflight.discard(seq)
                self._leased.pop(seq, None)
        late = set(self._store.ack_many(self._group, [d.handle[:2] for d in deliveries]))
        for delivery in deliveries:
            if delivery.handle[0] in late:
                self._late_ack(delivery)

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        seq, token, _ = delivery.handle
        with self._lock:
            self._inflight.discard(seq)
            self._leased.pop(seq, None)
            if not requeue:
                self._store.ack(self._group, seq, token)
                return
            # Buffered successors of the same key must wait for the nacked one: give them back.
            later: list[int] = []
            if delivery.key is not None:
                keep: deque[Delivery] = deque()
                for d in self._buffer:
                    if d.key == delivery.key and d.topic == delivery.topic:
                        later.append(d.handle[0])
                        self._leased.pop(d.handle[0], None)
                    else:
                        keep.append(d)
                self._buffer = keep
            self._store.release(self._group, [seq], token, delay=delay)
            self._store.release(self._group, later, token, uncount=True)

    def _close(self) -> None:
        with self._lock:
            buffered = [d.handle[0] for d in self._buffer]
            self._buffer.clear()
            inflight = sorted(self._inflight)
            self._inflight.clear()
            self._leased.clear()
        self._stop.set()
        self._keeper.join()
        try:
            self._store.release(self._group, buffered, self._token, uncount=True)
            self._store.release(self._group, inflight, self._token)
        except (MqkitError, sqlite3.Error) as exc:  # the leases run out instead: none lost
            log.warning("could not give back unacked messages on close: %s", exc)


@dataclass(frozen=True)
class MemorySettings(Settings):
    """Options of ``memory://`` (and, with the file's, of ``sqlite://``)."""

    visibility_timeout: float = option(
        30.0,
        "Seconds a received message stays leased to its consumer before the group gets it "
        "again (extended while the consumer is open; runs out when its process dies).",
        minimum=0.01,
        scopes=[CONSUMER],
    )
    prefetch: int = option(32, "Messages leased ahead per consumer.", minimum=1, scopes=[CONSUMER])
    poll_interval: float | None = option(
        None,
        "Seconds between looks for messages written by other processes (in-process writes "
        "wake consumers at once); default 0.05 for sqlite://, 0.5 for memory://.",
        minimum=0.001,
    )
    max_batch: int = option(
        1000,
        "Most messages the writer commits in one transaction.",
        minimum=1,
        scopes=[PRODUCER],
    )


@dataclass(frozen=True)
class SqliteSettings(MemorySettings):
    """Options of ``sqlite://``."""

    busy_timeout: float = option(
        30.0, "Seconds to wait for a lock held by another process before failing."
    )
    synchronous: str = option(
        "normal",
        "SQLite's synchronous pragma: normal (durable across process crashes) or full "
        "(also across power loss).",
        choices=("normal", "full"),
    )


class SqliteBackend(BackendBase[MemorySettings]):
    """``sqlite:///path.db``: one shared :class:`Store` per database file and process."""

    settings_type: ClassVar[type[Settings]] = SqliteSettings
    persistent = True
    default_poll = 0.05

    def __init__(self, url: BrokerURL, settings: MemorySettings) -> None:
        super().__init__(url, settings)
        self.features = Features(
            key_order_on_nack=True,
            delayed_redelivery=True,
            persistent=self.persistent,
            max_body_size=64 << 20,
        )
        self._key, self._store = self._open_store(url, settings)
        self._poll = settings.poll_interval or self.default_poll

    @classmethod
    def check_url(cls, url: BrokerURL) -> None:
        if url.hosts:
            raise ConfigError(
                f"{url}: a SQLite URL has no host; write sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        if not _path_of(url) or _path_of(url).endswith("/"):
            raise ConfigError(f"{url}: no database file given; e.g. sqlite:///mqkit.db")

    def _open_store(self, url: BrokerURL, settings: MemorySettings) -> tuple[str, Store]:
        assert isinstance(settings, SqliteSettings)
        real = os.path.realpath(_path_of(url))
        key = "file:" + real
        store = shared_store(
            key,
            real,
            memory=False,
            busy_timeout=settings.busy_timeout,
            synchronous=settings.synchronous,
        )
        return key, store

    def ping(self, timeout: float) -> None:
        """Take the database's write lock and give it back: a queue nobody can write to (a
        writer holding its lock, a read-only file) is not usable."""
        with self._store.locked() as conn:
            try:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise BrokerUnavailable(
                    f"SQLite queue {self._store.target!r} is unavailable: {exc}"
                ) from None

    def depth(self, group: str, topics: Sequence[str]) -> int | None:
        """Rows of the group's queue: waiting, delayed or leased, not yet acked."""
        marks = ",".join("?" * len(topics))
        with self._store.locked() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM queue WHERE grp = ? AND topic IN ({marks})",
                (group, *topics),
            ).fetchone()
        return int(row[0])

    def open_producer(self, settings: MemorySettings) -> SqliteProducer:
        return SqliteProducer(self._store, max_batch=settings.max_batch)

    def open_consumer(
        self, topics: tuple[str, ...], group: str, settings: MemorySettings
    ) -> SqliteConsumer:
        return SqliteConsumer(
            self._store,
            topics,
            group,
            visibility=settings.visibility_timeout,
            prefetch=settings.prefetch,
            poll_interval=self._poll,
        )

    def _close(self) -> None:
        release_store(self._key, self._store, keep=not self.persistent)


def _path_of(url: BrokerURL) -> str:
    return url.path[1:] if url.path.startswith("/") else url.path


# -- one Store per database per process ---------------------------------------------------------

_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


def shared_store(
    key: str, target: str, *, memory: bool, busy_timeout: float, synchronous: str
) -> Store:
    with _stores_lock:
        store = _stores.get(key)
        if store is None or store.pid != os.getpid():  # a forked child opens its own
            store = Store(target, memory=memory, busy_timeout=busy_timeout, synchronous=synchronous)
            _stores[key] = store
        store.users += 1
        return store


def release_store(key: str, store: Store, *, keep: bool) -> None:
    """Drop one user; the last one closes the database unless ``keep`` (in-memory data)."""
    with _stores_lock:
        store.users -= 1
        if store.users <= 0 and not keep and _stores.get(key) is store:
            del _stores[key]
            store.close()


#: The ``mqkit.adapters`` entry point of ``sqlite://``.
open_backend = SqliteBackend.open
