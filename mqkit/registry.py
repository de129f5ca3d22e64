"""Finds the backend for a URL scheme through the ``mqkit.adapters`` entry-point group.

The core knows no adapter by name: an adapter is a distribution (ours are named
``mqkit-<backend>``) that declares its schemes in that group, so a third party adds one
without touching mqkit.
"""

from __future__ import annotations

import threading
from importlib.metadata import entry_points

from mqkit.errors import ConfigError
from mqkit.spi import BackendFactory

GROUP = "mqkit.adapters"

#: Where the backends and their packages are listed, for the unknown-scheme error.
DOCS = "the Backends table in mqkit's README (docs/core.md: writing a backend)"

_registered: dict[str, BackendFactory] = {}
_lock = threading.Lock()


def register(scheme: str, factory: BackendFactory) -> None:
    """Register a backend in-process, for code that is not packaged with an entry point."""
    with _lock:
        _registered[scheme.lower()] = factory


def installed_schemes() -> list[str]:
    names = {ep.name.lower() for ep in entry_points(group=GROUP)}
    return sorted(names | set(_registered))


def lookup(scheme: str) -> BackendFactory:
    """The factory for ``scheme``, or a :class:`ConfigError` that says what to install."""
    scheme = scheme.lower()
    with _lock:
        if scheme in _registered:
            return _registered[scheme]
    matches = [ep for ep in entry_points(group=GROUP) if ep.name.lower() == scheme]
    if not matches:
        raise ConfigError(
            f"unknown broker URL scheme '{scheme}://': no installed adapter provides it "
            f"(installed schemes: {', '.join(installed_schemes())}). Backends other than the "
            "embedded ones come as adapter packages named 'mqkit-<backend>' (e.g. "
            "'pip install mqkit-kafka' for kafka://); install the one for this scheme, "
            f"see {DOCS}"
        )
    entry = matches[0]
    try:
        factory = entry.load()
    except ImportError as exc:
        dist = entry.dist.name if entry.dist else "its package"
        raise ConfigError(
            f"the adapter for '{scheme}://' ({entry.value}) failed to import: {exc}; "
            f"reinstall {dist} with its dependencies"
        ) from exc
    if not callable(factory):
        raise ConfigError(f"entry point {entry.value} for '{scheme}://' is not callable")
    return factory  # type: ignore[no-any-return]
