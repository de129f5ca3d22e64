"""Idempotent handlers: run a handler at most once per message identity.

Brokers deliver at least once, and producers may send twice. :func:`idempotent` wraps a handler
with a dedup store so that its side effect happens once per *identity*: by default the message
id (kept across mqkit retries and dead-letter replays, see :func:`default_key`), or whatever a
``key`` function returns (an order number, say).

How it works — *claim, process, mark done*:

1. ``claim(identity, lease)``: atomically take the identity if it is free or its record has
   expired. If it is already **done**, the handler is skipped and the message acked. If another
   delivery holds a live claim (**busy**), the message is given back for later.
2. Run the handler.
3. On success, **mark it done** for ``ttl`` seconds (the dedup window); on failure (or if the
   handler nacked the message), **release** the claim so a redelivery runs the handler again.

What is guaranteed, exactly:

* Duplicates that arrive while the identity is done (within ``ttl``) never run the handler.
* Two deliveries never run the handler at the same time while the claim's lease is live.
* The done mark is written only after the handler returned, and before the message is acked.
  So a crash (or a lost ack) *after* the done mark only causes a skipped redelivery.
* A crash *between* the handler's side effect and the done mark leaves a claim that expires
  after ``lease`` seconds; the redelivery then runs the handler **again**. This window cannot
  be closed when the side effect and the store are separate systems: make that side effect
  safe to repeat (an upsert, a conditional write, an idempotency key at the payment provider…)
  or put it in the same transaction as the mark with
  :meth:`mqkit.helpers.stores.postgres.PostgresStore.transactional`.
* ``lease`` must exceed the handler's longest run: if a claim expires while the handler still
  runs, a duplicate may run concurrently (the late done mark is logged as a warning).

Identities are namespaced by the route's group (or ``namespace``), since every group must
process every message once.

Stores: :class:`MemoryStore` (one process, tests), :class:`SqliteStore` (durable, one machine;
the default for durable use), :class:`~mqkit.helpers.stores.redis.RedisStore` and
:class:`~mqkit.helpers.stores.postgres.PostgresStore` (shared by many machines). All expire
their records.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from mqkit.envelope import IDEMPOTENCY_KEY, ORIGIN_ID
from mqkit.errors import RetryLater
from mqkit.message import Message

if TYPE_CHECKING:
    from mqkit.app import Handler, Route

log = logging.getLogger(__name__)

#: Default dedup window: a done identity is remembered this long (seconds).
DEFAULT_TTL = 7 * 24 * 3600.0
#: Default claim lease: longer than any handler should run (seconds).
DEFAULT_LEASE = 60.0


def default_key(message: Message) -> str:
    """The :data:`~mqkit.envelope.IDEMPOTENCY_KEY` header, else the original id of a retry or
    replay (:data:`~mqkit.envelope.ORIGIN_ID`), else the message id."""
    headers = message.headers
    return headers.get(IDEMPOTENCY_KEY) or headers.get(ORIGIN_ID) or message.id


ClaimStatus = Literal["claimed", "done", "busy"]


@dataclass(frozen=True, slots=True)
class Claim:
    status: ClaimStatus
    #: For ``busy``: seconds until the other claim expires (an upper bound on the wait).
    retry_after: float = 0.0


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where identities are claimed and marked done. Every method is atomic and thread-safe."""

    def claim(self, key: str, token: str, lease: float) -> Claim:
        """Take ``key`` for ``lease`` seconds under ``token`` if it has no live record."""
        ...

    def complete(self, key: str, token: str, ttl: float) -> bool:
        """Mark ``key`` done for ``ttl`` seconds; ``False`` if ``token``'s claim had been lost."""
        ...

    def release(self, key: str, token: str) -> None:
        """Drop ``token``'s claim on ``key`` (the handler failed); no-op if it is not held."""
        ...

    def close(self) -> None: ...


class ClaimBusy(RetryLater):
    """Another delivery of the same identity is being processed (or crashed holding it).

    Raised where the broker cannot delay a redelivery itself. It is a
    :class:`~mqkit.errors.RetryLater`: put :func:`mqkit.helpers.retry.retry` outside
    :func:`idempotent` and it schedules the message again after ``retry_after`` seconds without
    counting an attempt.
    """

    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(
            f"identity {key!r} is being processed by another delivery; "
            f"its claim expires within {retry_after:.1f} s",
            retry_after,
        )
        self.key = key


@dataclass
class IdempotencyStats:
    processed: int = 0
    skipped: int = 0
    busy: int = 0
    failed: int = 0
    lost_claims: int = 0


class Idempotent:
    """The middleware made by :func:`idempotent`; also a decorator for plain functions."""

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        key: Callable[[Message], str] = default_key,
        ttl: float = DEFAULT_TTL,
        lease: float = DEFAULT_LEASE,
        namespace: str | None = None,
        busy_delay: float = 1.0,
    ) -> None:
        if ttl <= 0 or lease <= 0:
            raise ValueError("ttl and lease must be > 0")
        self.store = store
        self.key = key
        self.ttl = ttl
        self.lease = lease
        self.namespace = namespace
        self.busy_delay = busy_delay
        self.stats = IdempotencyStats()
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def __call__(self, handler: Handler, route: Route | None = None) -> Handler:
        namespace = self.namespace
        if namespace is None:
            namespace = route.group if route is not None else ""
        prefix = f"{namespace}:" if namespace else ""
        can_delay = route is not None and route.broker.features.delayed_redelivery

        def run_once(message: Message) -> Any:
            identity = prefix + str(self.key(message))
            token = secrets.token_hex(8)
            claim = self.store.claim(identity, token, self.lease)
            if claim.status == "done":
                self._count("skipped")
                log.debug("skipping %r: identity %r already processed", message, identity)
                return None
            if claim.status == "busy":
                self._count("busy")
                wait = min(max(claim.retry_after, 0.05), self.busy_delay)
                if can_delay and message.settled is None:
                    message.nack(delay=wait)
                    return None
                raise ClaimBusy(identity, claim.retry_after)
            try:
                result = handler(message)
            except BaseException:
                self._count("failed")
                self.store.release(identity, token)
                raise
            if message.settled == "nack":  # the handler asked for another delivery
                self.store.release(identity, token)
                return result
            if not self.store.complete(identity, token, self.ttl):
                self._count("lost_claims")
                log.warning(
                    "identity %r: the claim expired while the handler ran (lease %.1f s); "
                    "another delivery may have run it too — raise the lease",
                    identity,
                    self.lease,
                )
            self._count("processed")
            return result

        return run_once


def idempotent(
    store: IdempotencyStore,
    *,
    key: Callable[[Message], str] = default_key,
    ttl: float = DEFAULT_TTL,
    lease: float = DEFAULT_LEASE,
    namespace: str | None = None,
    busy_delay: float = 1.0,
) -> Idempotent:
    """Run the handler at most once per identity (see the module docs for the guarantees).

    As App middleware: ``app.handler("orders", group="billing",
    middleware=[idempotent(store)])``; as a decorator: ``@idempotent(store, namespace="x")``.
    ``ttl`` is the dedup window, ``lease`` the claim's lifetime (longer than the handler runs),
    ``busy_delay`` the most a busy duplicate is delayed before it is looked at again.
    """
    return Idempotent(
        store, key=key, ttl=ttl, lease=lease, namespace=namespace, busy_delay=busy_delay
    )


# -- stores ----------------------------------------------------------------------------------


class MemoryStore:
    """A dict in this process: for tests and single-process deduplication that may forget."""

    def __init__(self, *, sweep_every: int = 1000) -> None:
        self._records: dict[str, tuple[bool, str, float]] = {}  # key -> (done, token, expires)
        self._lock = threading.Lock()
        self._sweep_every = sweep_every
        self._ops = 0

    def claim(self, key: str, token: str, lease: float) -> Claim:
        now = time.time()
        with self._lock:
            self._ops += 1
            if self._ops % self._sweep_every == 0:
                self._records = {k: r for k, r in self._records.items() if r[2] > now}
            record = self._records.get(key)
            if record is None or record[2] <= now:
                self._records[key] = (False, token, now + lease)
                return Claim("claimed")
            if record[0]:
                return Claim("done")
            return Claim("busy", record[2] - now)

    def complete(self, key: str, token: str, ttl: float) -> bool:
        with self._lock:
            record = self._records.get(key)
            self._records[key] = (True, "", time.time() + ttl)
            return record is not None and not record[0] and record[1] == token

    def release(self, key: str, token: str) -> None:
        with self._lock:
            record = self._records.get(key)
            if record is not None and not record[0] and record[1] == token:
                del self._records[key]

    def __len__(self) -> int:
        now = time.time()
        with self._lock:
            return sum(1 for r in self._records.values() if r[2] > now)

    def close(self) -> None:
        pass


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
