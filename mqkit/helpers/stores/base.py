"""What an idempotency store is: the claim it answers and the three atomic operations."""

from __future__ import annotations

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
