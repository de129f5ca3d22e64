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
``PostgresStore`` (shared by many machines). All expire their records.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mqkit.envelope import IDEMPOTENCY_KEY, ORIGIN_ID
from mqkit.errors import RetryLater
from mqkit.helpers.stores.base import Claim, ClaimStatus, IdempotencyStore
from mqkit.message import Message

if TYPE_CHECKING:
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
    return headers.get(IDEMPOTENCY_KEY) or headers.get(ORIGIN_ID) or message.id


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
