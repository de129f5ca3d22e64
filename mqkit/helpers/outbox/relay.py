"""The relay: publishes an outbox table's rows through any mqkit URL, at least once, in order.

One round: *claim* a batch (a lease on the oldest publishable rows), *publish* each row under
its own message id, *flush* (the broker confirmed every one), then *finish* (delete them, or
mark them sent for ``retention`` seconds). A failure anywhere before the finish gives the rows
back (or leaves the lease to expire if the relay died): the next round publishes them again
with the same ids, so a consumer with :func:`mqkit.helpers.idempotent` runs each once.

Order: a claim takes one key's rows oldest first and only when no other live lease holds that
key, and one producer sends them in that order; so a key's messages reach the broker in id
order, and a repeat after a failure repeats from the first unconfirmed one on.

``lease`` must exceed the time a round takes (publish and flush a batch): a relay that stalls
past its lease may publish rows that another relay publishes too (same ids, dropped by the
idempotency helper). :attr:`Relay.stats` counts what happened.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mqkit.client import Broker, Producer, connect
from mqkit.errors import MqkitError
from mqkit.helpers.outbox.base import OutboxRow, OutboxTable

if TYPE_CHECKING:
    from mqkit.aio.app import App as AsyncApp
    from mqkit.app import App

log = logging.getLogger("mqkit.outbox")


@dataclass
class RelayStats:
    """What a :class:`Relay` did; read it during or after :meth:`Relay.run`."""

    #: Rows published and confirmed by the broker, then finished.
    published: int = 0
    #: Rounds that published at least one row.
    batches: int = 0
    #: Rounds that failed (broker or database); their rows were given back.
    failures: int = 0
    #: Rows confirmed whose lease had been taken over by another relay meanwhile.
    lost_leases: int = 0
    #: Rows the producer refused outright, parked (see :meth:`Relay.run_once`).
    parked: int = 0


class Relay:
    """Publishes the rows of ``outbox`` (a :class:`SqliteOutbox` or :class:`PostgresOutbox`)
    through ``url`` (any mqkit URL) or an open ``broker``.

    ``batch`` rows per round; each round's rows are leased for ``lease`` seconds. When the
    table is empty the relay waits for a commit (PostgreSQL ``LISTEN``, SQLite's data version)
    or ``poll_interval`` seconds. A failing broker is retried after ``backoff`` seconds,
    doubling up to ``max_backoff``. ``run()`` blocks; :meth:`start` runs it in a thread;
    :meth:`attach` runs it inside an :class:`mqkit.App`.
    """

    def __init__(
        self,
        outbox: OutboxTable,
        url: str | None = None,
        *,
        broker: Broker | None = None,
        batch: int = 100,
        lease: float = 30.0,
        poll_interval: float = 5.0,
        retention: float = 0.0,
        flush_timeout: float | None = None,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if lease <= 0 or poll_interval <= 0 or retention < 0:
            raise ValueError("lease and poll_interval must be > 0, retention >= 0")
        self.outbox = outbox
        self._url = url
        self._broker = broker
        self._own_broker = broker is None
        self._producer: Producer | None = None
        self.batch = batch
        self.lease = lease
        self.poll_interval = poll_interval
        self.retention = retention
        self.flush_timeout = lease * 0.8 if flush_timeout is None else flush_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.token = secrets.token_hex(8)
        self.stats = RelayStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round -------------------------------------------------------------------------

    def _open_producer(self) -> Producer:
        if self._producer is None:
            if self._broker is None:
                self._broker = connect(self._url)
            self._producer = self._broker.producer(serializer="bytes")
        return self._producer

    def _drop_producer(self) -> None:
        """After a failure: start again with a fresh producer (and connection, if ours)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close()
        if self._own_broker and self._broker is not None:
            with contextlib.suppress(Exception):
                self._broker.close()
            self._broker = None

    def _publish(self, rows: list[OutboxRow]) -> tuple[list[OutboxRow], BaseException | None]:
        """Send ``rows`` in order and flush. A row the producer refuses outright (its body too
        large for the backend, a corrupt field) ends the batch there: returns the rows sent
        before it and the error; the caller parks it."""
        producer = self._open_producer()
        sent: list[OutboxRow] = []
        refused: BaseException | None = None
        for row in rows:
            try:
                producer.send(
                    row.topic,
                    row.body,
                    key=row.key,
                    headers=row.headers,
                    content_type=row.content_type,
                    content_encoding=row.content_encoding,
                    correlation_id=row.correlation_id,
                    reply_to=row.reply_to,
                    message_id=row.message_id,
                )
            except (ValueError, TypeError) as exc:  # MessageTooLarge is a ValueError
                refused = exc
                break
            sent.append(row)
        producer.flush(self.flush_timeout)
        return sent, refused

    def run_once(self) -> int:
        """Claim, publish, confirm and finish one batch; return how many rows it published.
        Raises what failed (the rows are given back first).

        A row the producer refuses outright is *parked*: leased for ever, so it is never
        published and its key's later rows wait behind it (order is kept); the error is
        logged. Delete or repair the row, then set its ``lease_until`` to 0."""
        rows = self.outbox.claim(self.token, self.batch, self.lease)
        if not rows:
            return 0
        ids = [row.id for row in rows]
        try:
            sent, refused = self._publish(rows)
        except BaseException:
            self._drop_producer()
            with contextlib.suppress(Exception):
                self.outbox.release(ids, self.token)
            raise
        if refused is not None:
            bad = rows[len(sent)]
            self.outbox.park([bad.id], self.token)
            self.outbox.release(ids[len(sent) + 1 :], self.token)
            self.stats.parked += 1
            log.error(
                "outbox %s: row %d (message %s to %r, key %r) parked: the producer refuses it "
                "(%s); its key's later rows wait until it is deleted or repaired",
                self.outbox.where,
                bad.id,
                bad.message_id,
                bad.topic,
                bad.key,
                refused,
            )
        done = [row.id for row in sent]
        finished = self.outbox.finish(done, self.token, self.retention) if done else 0
        if finished < len(done):
            self.stats.lost_leases += len(done) - finished
            log.warning(
                "outbox %s: %d of %d rows were leased by another relay before this one "
                "confirmed them (lease %.1f s too short?); they may be published twice",
                self.outbox.where,
                len(done) - finished,
                len(done),
                self.lease,
            )
        self.stats.published += len(done)
        self.stats.batches += 1
        return len(done)

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Publish until ``stop`` is set (by default the relay's own, set by :meth:`stop`).
        Failures (broker or database) are logged and retried after a backoff."""
        stop = self._stop if stop is None else stop
        delay = self.backoff
        try:
            while not stop.is_set():
                try:
                    count = self.run_once()
                except Exception as exc:  # a daemon: log, back off, try again
                    self.stats.failures += 1
                    log.warning(
                        "outbox %s: publishing failed (%s: %s); again in %.1f s",
                        self.outbox.where,
                        type(exc).__name__,
                        exc,
                        delay,
                        exc_info=not isinstance(exc, MqkitError),
                    )
                    stop.wait(delay)
                    delay = min(delay * 2, self.max_backoff)
                    continue
                delay = self.backoff
                if count < self.batch:
                    try:
                        self.outbox.wait(self.poll_interval, stop)
                    except Exception as exc:
                        log.warning("outbox %s: waiting failed: %s", self.outbox.where, exc)
                        stop.wait(delay)
        finally:
            self.close()

    def drain(self, timeout: float = 30.0) -> int:
        """Publish until no row is left (tests, shutdown); return how many were published.
        Raises :class:`TimeoutError` if rows are still left after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        total = 0
        while True:
            count = self.run_once()
            total += count
            if count == 0 and self.outbox.pending() == 0:
                return total
            if time.monotonic() > deadline:
                raise TimeoutError(f"outbox {self.outbox.where}: rows left after {timeout} s")
            if count == 0:
                time.sleep(0.05)  # leased by another relay: wait for it

    def start(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="mqkit-outbox-relay", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end after its current round; wait for a thread made by :meth:`start`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def attach(self, app: App | AsyncApp) -> Relay:
        """Run inside ``app`` (an :class:`mqkit.App` or an :class:`mqkit.aio.App`): started by
        ``app.run()``, stopped when the app stops. With no ``url`` nor ``broker`` given, it
        publishes through the app's broker."""
        borrow = self._url is None and self._broker is None

        def run(stopping: threading.Event) -> None:
            if borrow:
                broker: Any = app.broker
                self._broker = broker.sync if hasattr(broker, "sync") else broker  # aio: sync side
                self._own_broker = False
            self.run(stopping)

        app.background(run, "mqkit-outbox-relay")
        return self

    def close(self) -> None:
        """Flush and close the relay's producer (and its connection, if it made it)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(MqkitError):
                producer.close()
        if self._own_broker and self._broker is not None:
            with contextlib.suppress(MqkitError):
                self._broker.close()
            self._broker = None

    def __repr__(self) -> str:
        return f"Relay({self.outbox!r}, token={self.token!r})"
