"""The four idempotency stores, for tests: real Redis and PostgreSQL servers from env.

``MQKIT_TEST_REDIS_URL`` and ``MQKIT_TEST_POSTGRES_DSN`` name them (``scripts/brokers.d/
services start`` prints both). Unset: skipped locally, a failure in CI.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqkit.helpers.stores import IdempotencyStore, MemoryStore, SqliteStore

KINDS = ("memory", "sqlite", "redis", "postgres")
REDIS_ENV = "MQKIT_TEST_REDIS_URL"
POSTGRES_ENV = "MQKIT_TEST_POSTGRES_DSN"


def service_url(env: str) -> str:
    value = os.environ.get(env, "").strip()
    if value:
        return value
    if os.environ.get("CI"):
        raise RuntimeError(f"{env} is not set in CI: scripts/brokers.d/services must start it")
    pytest.skip(f"set {env} (scripts/brokers.d/services start prints it) to test this store")


@contextlib.contextmanager
def make_store(kind: str, tmp: Path) -> Iterator[IdempotencyStore]:
    store: IdempotencyStore
    if kind == "memory":
        store = MemoryStore()
    elif kind == "sqlite":
        store = SqliteStore(tmp / f"idem-{uuid.uuid4().hex[:8]}.db")
    elif kind == "redis":
        from mqkit.helpers.stores.redis import RedisStore

        store = RedisStore(service_url(REDIS_ENV), prefix=f"mqkit-test:{uuid.uuid4().hex}:")
    elif kind == "postgres":
        from mqkit.helpers.stores.postgres import PostgresStore

        store = PostgresStore(service_url(POSTGRES_ENV), pool_size=4)
    else:  # pragma: no cover
        raise ValueError(kind)
    try:
        yield store
    finally:
        store.close()
