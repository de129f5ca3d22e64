"""Store-and-forward: a producer that keeps accepting messages while its broker is down.

``broker.producer(spool="orders.spool")`` puts this driver in front of the backend's: every
``send`` is first committed to a local SQLite file (the *spool*) and a forwarder thread
publishes the spooled messages in order, deleting them only once the broker confirmed them
(``flush``). When the broker is unreachable or refuses, the forwarder retries with a backoff and
the messages wait in the spool, on disk: a process restart forwards them too (the next producer
on the same spool). Every forwarding of a message carries its id, so a message forwarded twice
(confirmed, then the process died before deleting it) is dropped by the consumers' idempotency
helper. One key's messages stay in order: one thread forwards them in spool order.

The spool is bounded (``spool_max`` messages): a send that finds it full raises
:class:`SpoolFull`. ``flush`` returns once every message is confirmed by the broker *or*, while
the broker is unreachable, safe in the spool. Without ``spool=`` none of this runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mqkit import envelope, observe
from mqkit.errors import ClosedError, ConfigError, DeliveryTimeout, MqkitError
from mqkit.message import OutgoingMessage
from mqkit.spi import ProducerDriver

log = logging.getLogger("mqkit.spool")

#: The default bound of a spool, in messages.
DEFAULT_SPOOL_MAX = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id       TEXT NOT NULL,
    topic            TEXT NOT NULL,
    msg_key          TEXT,
    body             BLOB NOT NULL,
    headers          TEXT NOT NULL,
    content_type     TEXT,
    content_encoding TEXT,
    correlation_id   TEXT,
    reply_to         TEXT,
    ts               REAL NOT NULL
);
"""
_COLUMNS = (
    "message_id, topic, msg_key, body, headers, content_type, content_encoding, "
    "correlation_id, reply_to, ts"
)


class SpoolFull(MqkitError):
    """The spool holds ``spool_max`` messages: the broker has been unreachable too long."""


@dataclass
class SpoolStatus:
    """What a spooling producer is doing (``Producer.spool``)."""

    path: str
    #: Messages in the spool, not yet confirmed by the broker.
    pending: int = 0
    #: Messages forwarded and confirmed since the producer was made.
    forwarded: int = 0
    #: Forwarding attempts that failed (broker unreachable or refusing).
    failures: int = 0
    #: Since when (``time.time()``) forwarding fails; ``None`` while it works.
    down_since: float | None = None
    last_error: str | None = None


def _pack(message: OutgoingMessage) -> tuple[Any, ...]:
    headers = ""
    if message.headers:
        flat, types = envelope.flatten_headers(message.headers, binary="base64")
        headers = json.dumps({"h": flat, "t": types}, ensure_ascii=False)
    return (
        message.id,
        message.topic,
        message.key,
        message.body,
        headers,
        message.content_type,
        message.content_encoding,
        message.correlation_id,
        message.reply_to,
        message.timestamp,
    )


def _unpack(row: tuple[Any, ...]) -> OutgoingMessage:
    headers: dict[str, envelope.HeaderValue] = {}
    if row[4]:
        doc = json.loads(row[4])
        headers = envelope.restore_headers(doc["h"], doc.get("t"))
    return OutgoingMessage(
        id=row[0],
        topic=row[1],
        key=row[2],
        body=bytes(row[3]),
        headers=headers,
        content_type=row[5],
        content_encoding=row[6],
        correlation_id=row[7],
        reply_to=row[8],
        timestamp=row[9],
    )


class SpoolingDriver:
    """A :class:`~mqkit.spi.ProducerDriver` that spools, then forwards through the backend's
    driver made by ``open_driver`` (made again after a failure)."""

    def __init__(
        self,
        open_driver: Callable[[], ProducerDriver],
        path: str | Path,
        *,
        system: str = "",
        max_messages: int = DEFAULT_SPOOL_MAX,
        batch: int = 500,
        flush_timeout: float = 10.0,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        if max_messages < 1:
            raise ConfigError("spool_max must be >= 1")
        self.path = str(path)
        self._open_driver = open_driver
        self._max = max_messages
        self._batch = batch
        self._flush_timeout = flush_timeout
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._cv = threading.Condition()
        self._closing = False
        self._closed = False
        self._lock_file = _lock(self.path)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            pending = self._conn.execute("SELECT count(*) FROM spool").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            self._lock_file.close()
            raise ConfigError(f"cannot open the spool {self.path!r}: {exc}") from None
        self.status = SpoolStatus(self.path, pending=int(pending))
        self._accepted = int(pending)  # messages ever in the spool, and of those forwarded:
        self._done = 0
        self._insert = f"INSERT INTO spool ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        self._driver: ProducerDriver | None = None
        try:
            self._driver = open_driver()  # a wrong option fails here, not in the thread
        except ConfigError:
            self._conn.close()
            self._lock_file.close()
            raise
        except MqkitError as exc:  # unreachable now: the forwarder tries again
            self._failed(exc)
        # mqkit.telemetry's spool gauges read it while the producer is open
        self._unwatch = observe.spools.add((system, self.path), self._snapshot)
        self._thread = threading.Thread(target=self._run, name="mqkit-spool", daemon=True)
        self._thread.start()

    def _snapshot(self) -> SpoolStatus:
        with self._cv:
            return dataclasses.replace(self.status)

    # -- the producer's side ---------------------------------------------------------------

    def send(self, message: OutgoingMessage) -> None:
        with self._cv:
            if self._closing:
                raise ClosedError("producer is closed")
            if self.status.pending >= self._max:
                since = self.status.down_since
                raise SpoolFull(
                    f"the spool {self.path!r} holds {self.status.pending} messages (spool_max); "
                    + (
                        f"the broker has been unreachable for {time.time() - since:.0f} s "
                        f"({self.status.last_error})"
                        if since is not None
                        else "the broker is slower than the producer"
                    )
                )
            self._conn.execute(self._insert, _pack(message))
            self.status.pending += 1
            self._accepted += 1
            self._cv.notify_all()

    def flush(self, timeout: float | None) -> None:
        """Until every message is confirmed by the broker, or safe in the spool while the
        broker is unreachable."""
        with self._cv:
            target = self._accepted
            done = self._cv.wait_for(
                lambda: self._done >= target or self.status.down_since is not None, timeout
            )
            if not done:
                raise DeliveryTimeout(
                    f"{self.status.pending} message(s) of the spool {self.path!r} not yet "
                    f"confirmed after {timeout} s"
                )

    def close(self) -> None:
        """Forward what the broker takes within the flush timeout, then stop; what is left
        stays in the spool for the next producer on it."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
        with self._cv:  # unlike flush, also while the broker is down: it may come back
            self._cv.wait_for(lambda: self.status.pending == 0, self._flush_timeout)
            self._closing = True
            self._cv.notify_all()
        self._thread.join()
        self._unwatch()
        driver, self._driver = self._driver, None
        if driver is not None:
            with contextlib.suppress(MqkitError):
                driver.close()
        self._conn.close()
        self._lock_file.close()

    # -- the forwarder ---------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        with self._cv:
            self.status.failures += 1
            self.status.last_error = f"{type(exc).__name__}: {exc}"
            if self.status.down_since is None:
                self.status.down_since = time.time()
                log.warning("spool %s: the broker is unreachable (%s)", self.path, exc)
            self._cv.notify_all()

    def _run(self) -> None:
        delay = self._backoff
        # The last spool row handed to the current driver: after a flush that timed out the
        # driver still holds those messages (it reconnects and publishes them itself), so
        # they are not sent again through it; a second driver publishing the same messages
        # beside the first could overtake it and break a key's order.
        handed = 0
        while True:
            with self._cv:
                while not self._closing and (
                    self.status.pending == 0 or self.status.down_since is not None
                ):
                    if self.status.down_since is not None and self.status.pending:
                        break  # retry after the backoff below
                    self._cv.wait()
                if self._closing:
                    return
                rows = self._conn.execute(
                    f"SELECT seq, {_COLUMNS} FROM spool ORDER BY seq LIMIT ?", (self._batch,)
                ).fetchall()
                retrying = self.status.down_since is not None
            if retrying:
                with self._cv:
                    if self._cv.wait_for(lambda: self._closing, delay):
                        return
            try:
                if self._driver is None:
                    self._driver = self._open_driver()
                    handed = 0
                for row in rows:
                    if row[0] > handed:
                        self._driver.send(_unpack(row[1:]))
                        handed = row[0]
                self._driver.flush(self._flush_timeout)
            except DeliveryTimeout as exc:  # not confirmed yet: wait for the same driver
                self._failed(exc)
                delay = min(delay * 2, self._max_backoff) if retrying else self._backoff
                continue
            except Exception as exc:  # a daemon: every other failure means a new driver
                driver, self._driver = self._driver, None
                if driver is not None:
                    with contextlib.suppress(Exception):
                        driver.close()
                self._failed(exc)
                delay = min(delay * 2, self._max_backoff) if retrying else self._backoff
                continue
            delay = self._backoff
            with self._cv:
                if rows:
                    self._conn.execute("DELETE FROM spool WHERE seq <= ?", (rows[-1][0],))
                self.status.pending -= len(rows)
                self.status.forwarded += len(rows)
                self._done += len(rows)
                if self.status.down_since is not None:
                    log.warning(
                        "spool %s: the broker answers again after %.1f s; forwarding",
                        self.path,
                        time.time() - self.status.down_since,
                    )
                self.status.down_since = None
                self.status.last_error = None
                self._cv.notify_all()


class _Lock:
    def __init__(self, file: Any) -> None:
        self._file = file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _lock(path: str) -> _Lock:
    """One producer per spool at a time (two would forward each other's messages)."""
    try:
        fcntl: Any = importlib.import_module("fcntl")
    except ImportError:  # pragma: no cover - not POSIX: the caller's responsibility
        return _Lock(None)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    file = open(path + ".lock", "a+")  # noqa: SIM115 - held until close
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.close()
        raise ConfigError(
            f"the spool {path!r} is in use by another producer; give each producer its own"
        ) from None
    return _Lock(file)


def pending_in(path: str | Path) -> int:
    """How many messages wait in the spool at ``path`` (for ``mqkit info``)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])
    finally:
        conn.close()
