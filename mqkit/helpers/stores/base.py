"""What an idempotency store is: the claim it answers and the three atomic operations."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

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


class AsyncIdempotencyStore(Protocol):
    """:class:`IdempotencyStore` for the event loop: the same operations, awaited."""

    async def claim(self, key: str, token: str, lease: float) -> Claim: ...

    async def complete(self, key: str, token: str, ttl: float) -> bool: ...

    async def release(self, key: str, token: str) -> None: ...

    async def close(self) -> None: ...


def is_async_store(store: object) -> bool:
    return inspect.iscoroutinefunction(getattr(store, "claim", None))


class ThreadedStore:
    """A sync store used from the event loop: each call runs in the default executor."""

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    async def claim(self, key: str, token: str, lease: float) -> Claim:
        return await asyncio.to_thread(self.store.claim, key, token, lease)

    async def complete(self, key: str, token: str, ttl: float) -> bool:
        return await asyncio.to_thread(self.store.complete, key, token, ttl)

    async def release(self, key: str, token: str) -> None:
        await asyncio.to_thread(self.store.release, key, token)

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)


def as_async_store(store: IdempotencyStore | AsyncIdempotencyStore) -> AsyncIdempotencyStore:
    """``store`` itself if it is async, else a :class:`ThreadedStore` around it."""
    if is_async_store(store):
        return store  # type: ignore[return-value]
    return ThreadedStore(store)  # type: ignore[arg-type]
