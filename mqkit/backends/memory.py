"""``memory://[name]``: the SQLite engine on an in-process database.

Every ``connect("memory://name")`` in one process shares one queue (so tests and threads can
talk to each other); it lives until the process ends. Nothing survives the process.
"""

from __future__ import annotations

from typing import ClassVar

from mqkit.adapter import BrokerURL, Settings
from mqkit.backends.sqlite import MemorySettings, SqliteBackend, Store, shared_store
from mqkit.errors import ConfigError


class MemoryBackend(SqliteBackend):
    settings_type: ClassVar[type[Settings]] = MemorySettings
    persistent = False
    default_poll = 0.5

    @classmethod
    def check_url(cls, url: BrokerURL) -> None:
        if len(url.hosts) > 1 or url.path not in ("", "/") or url.port is not None:
            raise ConfigError(f"{url}: write memory:// or memory://name (a name, no port or path)")

    def _open_store(self, url: BrokerURL, settings: MemorySettings) -> tuple[str, Store]:
        name = url.host or "default"
        key = "memory:" + name
        return key, shared_store(key, name, memory=True, busy_timeout=5.0, synchronous="normal")


#: The ``mqkit.adapters`` entry point of ``memory://``.
open_backend = MemoryBackend.open
