"""The official 5.x client (``rocketmq-python-client``), loaded once, with a precise error when it
is missing or broken (:func:`mqkit_rocketmq._drivers.load_v5`); and starting its clients."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from mqkit_rocketmq._drivers import load_v5

simple: Any = load_v5()
client: Any = importlib.import_module("rocketmq.v5.client")
producer: Any = importlib.import_module("rocketmq.v5.producer")
model: Any = importlib.import_module("rocketmq.v5.model")
exceptions: Any = importlib.import_module("rocketmq.v5.exception")
util: Any = importlib.import_module("rocketmq.v5.util")
proto: Any = importlib.import_module("rocketmq.grpc_protocol")
rpc: Any = importlib.import_module("rocketmq.v5.client.connection.rpc_client")
_rpc_channel: Any = importlib.import_module("rocketmq.v5.client.connection.rpc_channel")

Code: Any = proto.Code
T = TypeVar("T")

#: TLS credentials per proxy address (``host:port``), for the client's channels.
_credentials: dict[str, Any] = {}


def use_tls(target: str, credentials: Any) -> None:
    """Make the client's TLS channels to ``target`` (``host:port``) use ``credentials``.

    The client opens a TLS channel with ``grpc.ssl_channel_credentials()``, the system's CAs
    and no client certificate; it has no way to pass others. So its channel module gets a
    stand-in for ``grpc.aio`` whose ``secure_channel`` takes the credentials registered here.
    The client names a proxy as the access point says (``dns:localhost:8081``) and as routes
    say (``ipv4:127.0.0.1:8081``), so a channel takes the credentials of its address, else
    those registered for its port (one set per port and process: the last registered wins).
    """
    _credentials[_address(target)] = credentials
    _credentials[_port(target)] = credentials


def _address(target: str) -> str:
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return target[len(scheme) :]
    return target


def _port(target: str) -> str:
    return ":" + target.rpartition(":")[2]


class _Channels:
    """``grpc.aio`` for the client's channel module, with :func:`use_tls`'s credentials."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_aio, name)

    def secure_channel(self, target: str, credentials: Any, *args: Any, **kwargs: Any) -> Any:
        chosen = _credentials.get(_address(target)) or _credentials.get(_port(target))
        return _aio.secure_channel(target, chosen or credentials, *args, **kwargs)


_aio: Any = _rpc_channel.aio
_rpc_channel.aio = _Channels()


def start(started: Any) -> None:
    """``started.startup()`` where the client expects to run: see :func:`with_io_loop`.

    The client makes a consumer's telemetry stream (the subscription) in the callback of its
    first route lookup.
    """
    with_io_loop(started.startup)


def with_io_loop(call: Callable[[], T]) -> T:
    """``call()`` in a short-lived thread whose current event loop is the client's I/O loop.

    A route lookup (at start, or a producer's first send to a topic) ends in a callback that
    makes a telemetry stream. When the lookup is answered before that callback is added (a busy
    machine), the callback runs in the calling thread, where gRPC's asyncio layer needs a
    current event loop; in a thread without one (any thread after ``asyncio.run()``) the stream
    is never made, and the subscription is never confirmed or the send fails with "failed to
    fetch topic route". A thread of our own gives the client the loop it expects without
    setting one in the caller's thread.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.set_event_loop(rpc.RpcClient.get_channel_io_loop())
            result.append(call())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="mqkit-rocketmq-route", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
