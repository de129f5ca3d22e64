"""The asyncio API: the sync API's concepts, awaitable, on every backend (docs/asyncio.md).

``connect``, :class:`AsyncBroker`, :class:`AsyncProducer`, :class:`AsyncConsumer` and
:class:`AsyncMessage` bridge the sync drivers (:mod:`mqkit.aio._bridge` says which thread does
what); :class:`App` runs ``async def`` handlers.
"""

from mqkit.aio._bridge import (
    MAX_QUEUED,
    AsyncBroker,
    AsyncConsumer,
    AsyncMessage,
    AsyncProducer,
    connect,
)
from mqkit.aio.app import App, AsyncHandler

__all__ = [
    "MAX_QUEUED",
    "App",
    "AsyncBroker",
    "AsyncConsumer",
    "AsyncHandler",
    "AsyncMessage",
    "AsyncProducer",
    "connect",
]
