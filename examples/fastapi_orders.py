"""A FastAPI service with ``mqkit.aio``: an endpoint publishes, a handler consumes.

    pip install mqkit fastapi uvicorn
    MQKIT_URL=amqp://guest:guest@localhost:5672/ uvicorn examples.fastapi_orders:api

The lifespan connects once, starts the :class:`mqkit.aio.App` as a task beside the web server
(the server handles SIGINT/SIGTERM, so the App installs no signal handlers) and waits until
every group is subscribed before serving; on shutdown the App finishes in-flight messages, then
the producer flushes and the connection closes. ``POST /orders`` publishes an order; the
``billing`` handler receives it as an ``Order``; ``GET /billed`` shows what it billed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request

import mqkit.aio

URL = os.environ.get("MQKIT_URL", "memory://orders-example")


@dataclass
class Order:
    id: int
    item: str
    quantity: int = 1


mq = mqkit.aio.App()
billed: list[Order] = []


@mq.handler("orders", group="billing")
async def bill(order: Order) -> None:
    """Called with the validated ``Order``; a body that is not one goes to the dead letters."""
    billed.append(order)


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with mqkit.aio.connect(URL) as broker:
        mq.broker = broker
        ready = asyncio.Event()
        running = asyncio.create_task(mq.run(install_signal_handlers=False, on_ready=ready.set))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if running.done():  # it failed before subscribing: raise why
            running.result()
        try:
            async with broker.producer() as producer:
                api.state.producer = producer
                yield
        finally:
            mq.stop()
            await running


api = FastAPI(lifespan=lifespan)


@api.post("/orders", status_code=202)
async def place_order(order: Order, request: Request) -> dict[str, str]:
    producer: mqkit.aio.AsyncProducer = request.app.state.producer
    message_id = await producer.send("orders", order, key=str(order.id))
    await producer.flush()  # returns once the broker has it
    return {"message_id": message_id}


@api.get("/billed")
async def list_billed() -> list[Order]:
    return billed
