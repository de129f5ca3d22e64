"""The idempotency stores the suite runs its idempotency tests with.

Memory and SQLite always; Redis and PostgreSQL on the servers named by ``MQKIT_TEST_REDIS_URL``
and ``MQKIT_TEST_POSTGRES_DSN`` (the ``mqkit[redis]`` / ``mqkit[postgres]`` extras). Unset, their
tests are skipped, or fail in CI when the ini option ``mqkit_require_services`` is true: a
project that tests the stores must not pass without them.
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
#: Set by the suite's conftest from ``mqkit_require_services`` and ``CI``.
REQUIRED = False


def service_url(env: str) -> str:
    value = os.environ.get(env, "").strip()
    if value:
        return value
    if REQUIRED:
        pytest.fail(f"{env} is not set in CI (mqkit_require_services = true)")
    pytest.skip(f"set {env} to test this store")


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
