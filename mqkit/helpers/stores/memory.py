"""The in-process store: for tests and single-process deduplication that may forget."""

from __future__ import annotations

import threading
import time

from mqkit.helpers.stores.base import Claim


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
