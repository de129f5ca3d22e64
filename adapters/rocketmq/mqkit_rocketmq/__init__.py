"""mqkit backend for Apache RocketMQ.

Two URL schemes, two drivers, imported only when used:

* ``rocketmq://[access_key:secret_key@]host:8081[/namespace]`` — RocketMQ 5.x through its gRPC
  proxy, with Apache's pure-Python client (``pip install 'mqkit-rocketmq[grpc]'``).
* ``rocketmq+remoting://[access_key:secret_key@]namesrv:9876`` — RocketMQ 4.x (and 5.x) through
  the name server and the remoting protocol, with Apache's ctypes binding of the native
  ``librocketmq`` (``pip install 'mqkit-rocketmq[remoting]'`` plus the native library), or the
  third-party wheel that bundles one (``pip install 'mqkit-rocketmq[remoting-bundled]'``).

Both client distributions install a top-level package named ``rocketmq``; one environment holds
one of them. :func:`installed_drivers` tells which is there, and every failure to import one
says exactly what to install or remove.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mqkit.config import BrokerURL
from mqkit.errors import ConfigError
from mqkit.spi import Backend
from mqkit_rocketmq._drivers import installed_drivers

__all__ = ["installed_drivers", "open_backend"]

SCHEMES = ("rocketmq", "rocketmq+remoting")


def open_backend(url: BrokerURL, options: Mapping[str, Any]) -> Backend:
    """Entry point for ``rocketmq://`` (5.x gRPC proxy) and ``rocketmq+remoting://`` (4.x)."""
    if url.scheme == "rocketmq":
        from mqkit_rocketmq import v5

        return v5.open_backend(url, options)
    if url.scheme == "rocketmq+remoting":
        from mqkit_rocketmq import remoting

        return remoting.open_backend(url, options)
    raise ConfigError(
        f"{url}: mqkit-rocketmq serves the schemes {', '.join(s + '://' for s in SCHEMES)}, "
        f"not {url.scheme}://"
    )

