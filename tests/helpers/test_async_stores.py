"""AsyncRedisStore and AsyncPostgresStore on the real servers: the store contract, records
shared with the sync store of the same server, and idempotent() on mqkit.aio.App."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from mqkit import aio
from mqkit.envelope import IDEMPOTENCY_KEY
from mqkit.helpers import idempotent
from mqkit.helpers.stores.base import AsyncIdempotencyStore, IdempotencyStore
from mqkit.testing import TestClient
from mqkit.testing.aio import run
from mqkit.testing.stores import POSTGRES_ENV, REDIS_ENV, service_url

KINDS = ("redis", "postgres")


def stores(kind: str) -> tuple[Callable[[], AsyncIdempotencyStore], Callable[[], IdempotencyStore]]:
    """Makers of the async store and of the sync one on the same records."""
    if kind == "redis":
        from mqkit.helpers.stores.redis import AsyncRedisStore, RedisStore

        url, prefix = service_url(REDIS_ENV), f"mqkit-test:{uuid.uuid4().hex}:"
        return (
            lambda: AsyncRedisStore(url, prefix=prefix),
            lambda: RedisStore(url, prefix=prefix),
        )
    from mqkit.helpers.stores.postgres import AsyncPostgresStore, PostgresStore

    dsn = service_url(POSTGRES_ENV)
    return (lambda: AsyncPostgresStore(dsn, pool_size=4), lambda: PostgresStore(dsn, pool_size=2))


@asynccontextmanager
async def opened(store: AsyncIdempotencyStore) -> AsyncIterator[Any]:
    try:
        yield store
    finally:
        await store.close()


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.mark.parametrize("kind", KINDS)
def test_claim_busy_done_release_and_lost_claims(kind: str) -> None:
    made = stores(kind)[0]()  # made (client imported) before the loop runs

    async def main() -> None:
        async with opened(made) as store:
            k = key()
            assert (await store.claim(k, "a", 30)).status == "claimed"
            busy = await store.claim(k, "b", 30)
            assert busy.status == "busy" and 0 < busy.retry_after <= 30
            assert await store.complete(k, "a", 30) is True
            assert (await store.claim(k, "c", 30)).status == "done"

            k2 = key()
            assert (await store.claim(k2, "a", 30)).status == "claimed"
            await store.release(k2, "someone else")  # not the holder: no effect
            assert (await store.claim(k2, "b", 30)).status == "busy"
            await store.release(k2, "a")
            assert (await store.claim(k2, "b", 30)).status == "claimed"

            k3 = key()
            assert (await store.claim(k3, "a", 0.2)).status == "claimed"
            await asyncio.sleep(0.3)  # the lease ran out: another delivery takes it
            assert (await store.claim(k3, "b", 30)).status == "claimed"
            assert await store.complete(k3, "a", 30) is False  # a's claim was lost

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_claims_one_wins(kind: str) -> None:
    made = stores(kind)[0]()  # made (client imported) before the loop runs

    async def main() -> None:
        async with opened(made) as store:
            k = key()
            claims = await asyncio.gather(*(store.claim(k, f"t{n}", 30) for n in range(8)))
            assert sorted(c.status for c in claims) == ["busy"] * 7 + ["claimed"]

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_sync_and_async_stores_share_records(kind: str) -> None:
    make, make_sync = stores(kind)
    sync, made = make_sync(), make()
    k = key()
    try:
        assert sync.claim(k, "sync", 30).status == "claimed"

        async def main() -> None:
            async with opened(made) as store:
                assert (await store.claim(k, "async", 30)).status == "busy"
                sync.complete(k, "sync", 30)
                assert (await store.claim(k, "async", 30)).status == "done"

        run(main)
    finally:
        sync.close()


@pytest.mark.parametrize("kind", KINDS)
def test_idempotent_async_app_skips_duplicates(kind: str) -> None:
    make, _ = stores(kind)
    store = make()
    calls: list[object] = []
    app = aio.App()

    @app.handler("payments", group="ledger", middleware=[idempotent(store)])
    async def book(message: aio.AsyncMessage) -> None:
        calls.append(message.value)

    run_id = uuid.uuid4().hex  # the PostgreSQL table outlives the test
    with TestClient(app) as client:
        for n in (1, 1, 2, 1):  # one key: handled in this order (unkeyed ones run concurrently)
            client.publish(
                "payments",
                {"payment": n},
                key="account-7",
                headers={IDEMPOTENCY_KEY: f"p-{run_id}-{n}"},
            )
        assert [m.value for m in client.received("ledger")] == [{"payment": 1}, {"payment": 2}]
    assert calls == [{"payment": 1}, {"payment": 2}]
