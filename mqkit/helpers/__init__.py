"""Reliability helpers, written once against the public producer/consumer interface so they
work the same on every backend: idempotent handlers, retries with dead letters, and per-key
ordered processing. They compose as App middleware (list ``retry`` first)::

    from mqkit.helpers import RetryPolicy, SqliteStore, idempotent, retry

    app.handler(
        "orders",
        group="billing",
        middleware=[retry(RetryPolicy.exponential(0.5)), idempotent(SqliteStore("dedup.db"))],
    )(charge)

Every idempotency store lives in :mod:`mqkit.helpers.stores` (Redis and PostgreSQL imported on
use); dead letters (list, replay) in :mod:`mqkit.deadletter`; the transactional outbox and its
relay in :mod:`mqkit.helpers.outbox` (the producer side, with ``spool=`` in
:mod:`mqkit.spool`). The ``App``'s per-key worker pool (:class:`OrderedProcessor`,
``workers=N``) is part of the core and re-exported here.
"""

from mqkit.envelope import IDEMPOTENCY_KEY, ORIGIN_ID
from mqkit.helpers.idempotency import ClaimBusy, Idempotent, default_key, idempotent
from mqkit.helpers.ordering import (
    OrderedProcessor,
    SequenceChecker,
    SequencedProducer,
    SequenceEvent,
    Sequencer,
)
from mqkit.helpers.retry import Retry, RetryPolicy, original_view, replay_topic, retry, retry_topic
from mqkit.helpers.stores import Claim, IdempotencyStore, MemoryStore, SqliteStore

__all__ = [
    "IDEMPOTENCY_KEY",
    "ORIGIN_ID",
    "Claim",
    "ClaimBusy",
    "IdempotencyStore",
    "Idempotent",
    "MemoryStore",
    "OrderedProcessor",
    "Retry",
    "RetryPolicy",
    "SequenceChecker",
    "SequenceEvent",
    "SequencedProducer",
    "Sequencer",
    "SqliteStore",
    "default_key",
    "idempotent",
    "original_view",
    "replay_topic",
    "retry",
    "retry_topic",
]
