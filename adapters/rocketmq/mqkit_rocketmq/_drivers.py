"""Which RocketMQ client is installed, and a precise error when the needed one is not.

Three PyPI distributions install a top-level package named ``rocketmq``:

* ``rocketmq-python-client`` (Apache, 5.x, pure Python over gRPC) — for ``rocketmq://``;
* ``rocketmq-client-python`` (Apache, 4.x remoting, ctypes over the native ``librocketmq`` of
  rocketmq-client-cpp 2.x, which it does not ship) — for ``rocketmq+remoting://``;
* ``rocketmq`` (third party, the older API of the same binding; its manylinux wheel bundles
  ``librocketmq`` built before rocketmq-client-cpp 2.0) — also for ``rocketmq+remoting://``.

They overwrite each other's ``rocketmq/__init__.py`` (and the two 4.x ones every file), so an
environment holds exactly one of them; installing one over another leaves a broken package.
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata
from types import ModuleType

from mqkit.errors import ConfigError

log = logging.getLogger("mqkit.rocketmq")

GRPC_DIST = "rocketmq-python-client"
REMOTING_DIST = "rocketmq-client-python"
BUNDLED_DIST = "rocketmq"
GRPC_TESTED = ((5, 1, 2), (5, 2, 0))
INSTALL_GRPC = "pip install 'mqkit-rocketmq[grpc]'"
INSTALL_REMOTING = "pip install 'mqkit-rocketmq[remoting]'"
INSTALL_BUNDLED = "pip install 'mqkit-rocketmq[remoting-bundled]'"
NATIVE_HELP = (
    "install the native library of rocketmq-client-cpp 2.0.0 (the Apache RocketMQ release "
    "packages rocketmq-client-cpp-2.0.0.amd64.deb / .rpm put librocketmq.so under /usr/lib; "
    "or build it from source and copy librocketmq.so to /usr/local/lib, then run ldconfig), "
    "or switch to the wheel that bundles one (Linux x86_64): "
    f"pip uninstall -y {REMOTING_DIST} && {INSTALL_BUNDLED}"
)


def installed_drivers() -> dict[str, str]:
    """``{distribution: version}`` of every installed distribution providing ``rocketmq``."""
    found: dict[str, str] = {}
    names = metadata.packages_distributions().get("rocketmq", [])
    for name in names:
        try:
            found[metadata.distribution(name).metadata["Name"].lower()] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - stale metadata
            continue
    return found


def _others(drivers: dict[str, str], wanted: tuple[str, ...]) -> list[str]:
    return [f"{name} {version}" for name, version in drivers.items() if name not in wanted]


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def load_v5() -> ModuleType:
    """Import the 5.x gRPC client (``rocketmq.v5``), or say exactly how to get it."""
    drivers = installed_drivers()
    others = _others(drivers, (GRPC_DIST,))
    if GRPC_DIST not in drivers:
        hint = ""
        if others:
            hint = (
                f"; this environment has {', '.join(others)} instead (the 4.x remoting client, "
                "which installs a package also named 'rocketmq', so the two cannot share an "
                f"environment): run `pip uninstall -y {' '.join(o.split()[0] for o in others)}` "
                f"first, use a separate virtualenv, or use rocketmq+remoting://namesrv:9876 "
                "with the installed client"
            )
        raise ConfigError(
            "rocketmq:// talks to a RocketMQ 5 gRPC proxy through Apache's "
            f"rocketmq-python-client, which is not installed: {INSTALL_GRPC}{hint}"
        )
    try:
        module = importlib.import_module("rocketmq.v5.consumer.simple")
        importlib.import_module("rocketmq.v5.producer")
    except Exception as exc:
        if others:
            raise ConfigError(
                f"rocketmq-python-client {drivers[GRPC_DIST]} is installed but does not import "
                f"({type(exc).__name__}: {exc}): {', '.join(others)} was installed over it "
                "(both ship a top-level package 'rocketmq'); repair with `pip uninstall -y "
                f"{' '.join(o.split()[0] for o in others)} {GRPC_DIST} && {INSTALL_GRPC}`"
            ) from exc
        raise ConfigError(
            f"rocketmq-python-client {drivers[GRPC_DIST]} is installed but does not import "
            f"({type(exc).__name__}: {exc}); reinstall it: "
            f"pip install --force-reinstall '{GRPC_DIST}>=5.1.2,<5.2'"
        ) from exc
    version = _version_tuple(drivers[GRPC_DIST])
    if not GRPC_TESTED[0] <= version < GRPC_TESTED[1]:
        log.warning(
            "rocketmq-python-client %s is outside the range mqkit-rocketmq was tested with "
            "(>=5.1.2,<5.2)",
            drivers[GRPC_DIST],
        )
    return module


def load_remoting() -> tuple[ModuleType, str]:
    """Import the 4.x binding: ``(rocketmq.client, "apache" | "bundled")``."""
    drivers = installed_drivers()
    has_apache = REMOTING_DIST in drivers
    has_bundled = BUNDLED_DIST in drivers
    if not (has_apache or has_bundled):
        hint = ""
        if GRPC_DIST in drivers:
            hint = (
                f"; this environment has {GRPC_DIST} {drivers[GRPC_DIST]} instead (the 5.x gRPC "
                "client, for rocketmq://host:8081 against a RocketMQ 5 proxy); it installs a "
                "package also named 'rocketmq', so the 4.x client needs a separate virtualenv "
                f"(or `pip uninstall -y {GRPC_DIST}` first)"
            )
        raise ConfigError(
            "rocketmq+remoting:// talks to a RocketMQ name server through Apache's "
            f"rocketmq-client-python and the native librocketmq, which are not installed: "
            f"{INSTALL_REMOTING} and the native library ({NATIVE_HELP.split(', or switch')[0]}), "
            f"or {INSTALL_BUNDLED} for a wheel that bundles the native library{hint}"
        )
    if has_apache and has_bundled:
        raise ConfigError(
            f"both {REMOTING_DIST} {drivers[REMOTING_DIST]} and {BUNDLED_DIST} "
            f"{drivers[BUNDLED_DIST]} are installed; they write the same files, so neither is "
            f"reliable: keep one (`pip uninstall -y {BUNDLED_DIST} {REMOTING_DIST}` then "
            f"{INSTALL_REMOTING} or {INSTALL_BUNDLED})"
        )
    dist = REMOTING_DIST if has_apache else BUNDLED_DIST
    try:
        client = importlib.import_module("rocketmq.client")
    except ImportError as exc:
        if "dynamic library not found" in str(exc):
            raise ConfigError(
                f"rocketmq+remoting:// uses {dist} {drivers[dist]}, a binding of the native "
                f"library librocketmq, which was not found on this machine: {NATIVE_HELP}"
            ) from exc
        raise ConfigError(
            f"{dist} {drivers[dist]} is installed but does not import ({exc}); "
            f"reinstall it: pip install --force-reinstall '{dist}=={drivers[dist]}'"
        ) from exc
    except AttributeError as exc:  # a librocketmq too old for the binding: missing symbols
        raise ConfigError(
            f"{dist} {drivers[dist]} found a librocketmq that lacks functions it needs ({exc}); "
            "it needs the library of rocketmq-client-cpp 2.0.0 or later. "
            "(The librocketmq bundled in the PyPI wheel rocketmq 0.4.4 predates 2.0 and only works "
            f"with that wheel's own Python code: {INSTALL_BUNDLED}.)"
        ) from exc
    except OSError as exc:  # the library exists but cannot be loaded (arch, glibc, deps)
        raise ConfigError(
            f"{dist} {drivers[dist]} could not load the native library librocketmq ({exc}): "
            f"{NATIVE_HELP}"
        ) from exc
    flavour = "apache" if hasattr(client, "ReceivedMessage") else "bundled"
    return client, flavour
