"""Finds the backend for a URL scheme through the ``mqkit.adapters`` entry-point group."""

from __future__ import annotations

import threading
from importlib.metadata import entry_points

from mqkit.errors import ConfigError
from mqkit.spi import BackendFactory

GROUP = "mqkit.adapters"

#: Schemes whose adapter lives in a separate distribution, to tell users what to install.
KNOWN_PACKAGES: dict[str, tuple[str, str]] = {
    "kafka": ("mqkit-kafka", "adapters/kafka"),
    "amqp": ("mqkit-rabbitmq", "adapters/rabbitmq"),
    "amqps": ("mqkit-rabbitmq", "adapters/rabbitmq"),
    "stomp": ("mqkit-activemq", "adapters/activemq"),
    "stomp+ssl": ("mqkit-activemq", "adapters/activemq"),
    "rocketmq": ("mqkit-rocketmq", "adapters/rocketmq"),
    "rocketmq+remoting": ("mqkit-rocketmq", "adapters/rocketmq"),
}

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
        if scheme in KNOWN_PACKAGES:
            dist, folder = KNOWN_PACKAGES[scheme]
            raise ConfigError(
                f"no adapter for '{scheme}://' is installed; install it with "
                f"'pip install {dist}' (or 'pip install ./{folder}' from a source checkout)"
            )
        raise ConfigError(
            f"unknown broker URL scheme '{scheme}://'; installed schemes: "
            f"{', '.join(installed_schemes())}; other backends come as adapter packages "
            f"({', '.join(sorted({d for d, _ in KNOWN_PACKAGES.values()}))})"
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
