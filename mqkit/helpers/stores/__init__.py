"""Idempotency stores, all here; the idempotency logic is :mod:`mqkit.helpers.idempotency`.

* :class:`MemoryStore` — in this process (tests, deduplication that may forget)
* :class:`SqliteStore` — a SQLite file, durable, shared by the processes of one machine
* :class:`mqkit.helpers.stores.redis.RedisStore` — ``pip install 'mqkit[redis]'``
* :class:`mqkit.helpers.stores.postgres.PostgresStore` — ``pip install 'mqkit[postgres]'``

The Redis and PostgreSQL stores need a client library and are imported only when used. A store
of your own implements :class:`IdempotencyStore`.
"""

from mqkit.helpers.stores.base import Claim, ClaimStatus, IdempotencyStore
from mqkit.helpers.stores.memory import MemoryStore
from mqkit.helpers.stores.sqlite import SqliteStore

__all__ = ["Claim", "ClaimStatus", "IdempotencyStore", "MemoryStore", "SqliteStore"]
