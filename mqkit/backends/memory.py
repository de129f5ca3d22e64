"""``memory://[name]``: the SQLite engine on an in-process database.

Every ``connect("memory://name")`` in one process shares one queue (so tests and threads can
talk to each other); it lives until the process ends. Nothing survives the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mqkit.backends.sqlite import SqliteBackend, release_store, shared_store
from mqkit.config import BrokerURL
from mqkit.errors import ConfigError
from mqkit.options import Options


def open_backend(url: BrokerURL, options: Mapping[str, Any]) -> SqliteBackend:
    """Entry point for ``memory://`` (the default queue) and ``memory://name``."""
    if len(url.hosts) > 1 or url.path not in ("", "/") or url.port is not None:
        raise ConfigError(f"{url}: write memory:// or memory://name (a name, no port or path)")
    name = url.host or "default"
    key = "memory:" + name
    opts = Options(f"memory://{name}", options)
    store = shared_store(key, name, memory=True, busy_timeout=5.0, synchronous="normal")
    try:
        backend = SqliteBackend(
            store, opts, persistent=False, on_close=lambda: release_store(key, store, keep=True)
        )
        opts.done()
    except BaseException:
        release_store(key, store, keep=True)
        raise
    return backend
