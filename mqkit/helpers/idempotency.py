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

Stores live in :mod:`mqkit.helpers.stores`: ``MemoryStore`` (one process, tests),
``SqliteStore`` (durable, one machine; the default for durable use), ``RedisStore`` and
``PostgresStore`` (shared by many machines). All expire their records. ``mqkit.aio.App`` takes
the same middleware (:meth:`Idempotent.wrap_async`) with ``AsyncRedisStore`` or
``AsyncPostgresStore``, or any sync store, whose calls then run in threads.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mqkit.envelope import IDEMPOTENCY_KEY, ORIGIN_ID, header_text
from mqkit.errors import RetryLater
from mqkit.helpers.stores.base import (
    AsyncIdempotencyStore,
    Claim,
    ClaimStatus,
    IdempotencyStore,
    as_async_store,
    is_async_store,
)
from mqkit.message import Message
from mqkit.observe import report

if TYPE_CHECKING:
    from mqkit.aio import AsyncHandler, AsyncMessage
    from mqkit.aio.app import AsyncRoute
    from mqkit.app import Handler, Route

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_TTL",
    "Claim",
    "ClaimBusy",
    "ClaimStatus",
    "IdempotencyStats",
    "IdempotencyStore",
    "Idempotent",
    "default_key",
    "idempotent",
]

#: Default dedup window: a done identity is remembered this long (seconds).
DEFAULT_TTL = 7 * 24 * 3600.0
#: Default claim lease: longer than any handler should run (seconds).
DEFAULT_LEASE = 60.0


def default_key(message: Message) -> str:
    """The :data:`~mqkit.envelope.IDEMPOTENCY_KEY` header, else the original id of a retry or
    replay (:data:`~mqkit.envelope.ORIGIN_ID`), else the message id."""
    headers = message.headers
    return header_text(headers, IDEMPOTENCY_KEY) or header_text(headers, ORIGIN_ID) or message.id


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
        store: IdempotencyStore | AsyncIdempotencyStore,
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

    # -- the steps shared by the sync and the async middleware -----------------------------

    def _prefix(self, group: str | None) -> str:
        namespace = self.namespace if self.namespace is not None else (group or "")
        return f"{namespace}:" if namespace else ""

    def _claimed(self, claim: Claim, identity: str, message: object) -> float | None:
        """After ``claim``: ``None`` to run the handler, else how long to delay a busy
        duplicate (``-1.0`` for a done one: skip it)."""
        if claim.status == "done":
            self._count("skipped")
            report("duplicates")
            log.debug("skipping %r: identity %r already processed", message, identity)
            return -1.0
        if claim.status == "busy":
            self._count("busy")
            report("deferred")
            return min(max(claim.retry_after, 0.05), self.busy_delay)
        return None

    def _completed(self, held: bool, identity: str) -> None:
        if not held:
            self._count("lost_claims")
            log.warning(
                "identity %r: the claim expired while the handler ran (lease %.1f s); "
                "another delivery may have run it too — raise the lease",
                identity,
                self.lease,
            )
        self._count("processed")

    # -- sync ------------------------------------------------------------------------------

    def __call__(self, handler: Handler, route: Route | None = None) -> Handler:
        if is_async_store(self.store):
            raise TypeError(f"{self.store!r} is an async store: use it with mqkit.aio.App")
        store: IdempotencyStore = self.store  # type: ignore[assignment]
        prefix = self._prefix(route.group if route is not None else None)
        can_delay = route is not None and route.broker.features.delayed_redelivery

        def run_once(message: Message) -> Any:
            identity = prefix + str(self.key(message))
            token = secrets.token_hex(8)
            claim = store.claim(identity, token, self.lease)
            wait = self._claimed(claim, identity, message)
            if wait is not None and wait < 0:
                return None
            if wait is not None:
                if can_delay and message.settled is None:
                    message.nack(delay=wait)
                    return None
                raise ClaimBusy(identity, claim.retry_after)
            try:
                result = handler(message)
            except BaseException:
                self._count("failed")
                store.release(identity, token)
                raise
            if message.settled == "nack":  # the handler asked for another delivery
                store.release(identity, token)
                return result
            self._completed(store.complete(identity, token, self.ttl), identity)
            return result

        return run_once

    # -- async (mqkit.aio.App) -------------------------------------------------------------

    def wrap_async(self, handler: AsyncHandler, route: AsyncRoute) -> AsyncHandler:
        """The same middleware for ``async def`` handlers; a sync store runs in threads."""
        store = as_async_store(self.store)
        prefix = self._prefix(route.group)
        can_delay = route.broker.features.delayed_redelivery

        async def run_once(message: AsyncMessage) -> Any:
            identity = prefix + str(self.key(message.sync))
            token = secrets.token_hex(8)
            claim = await store.claim(identity, token, self.lease)
            wait = self._claimed(claim, identity, message)
            if wait is not None and wait < 0:
                return None
            if wait is not None:
                if can_delay and message.settled is None:
                    await message.nack(delay=wait)
                    return None
                raise ClaimBusy(identity, claim.retry_after)
            try:
                result = await handler(message)
            except BaseException:
                self._count("failed")
                await store.release(identity, token)
                raise
            if message.settled == "nack":
                await store.release(identity, token)
                return result
            self._completed(await store.complete(identity, token, self.ttl), identity)
            return result

        return run_once


def idempotent(
    store: IdempotencyStore | AsyncIdempotencyStore,
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
    On :class:`mqkit.aio.App` it takes an async store (``AsyncRedisStore``,
    ``AsyncPostgresStore``) or a sync one (run in threads).
    """
    return Idempotent(
        store, key=key, ttl=ttl, lease=lease, namespace=namespace, busy_delay=busy_delay
    )
