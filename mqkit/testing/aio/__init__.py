"""Helpers of the async conformance cases: a loop that fails the test when it is blocked, and
the async ``collect``/``assert_quiet``."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from mqkit.aio import AsyncConsumer, AsyncMessage
from mqkit.testing.util import ARRIVAL, QUIET

T = TypeVar("T")

#: A callback or task step that computes on the loop this long (CPU time of the loop's thread)
#: fails the test: the issue's 50 ms, measured so that other threads holding the GIL on a busy
#: machine do not count against the loop.
SLOW_CALLBACK = 0.05
#: A step that takes this long by the clock fails the test too, whatever it spent its time on:
#: a blocking wait on the loop (a socket, a lock, ``time.sleep``) uses no CPU.
BLOCKED_WAIT = 0.25


def run(
    main: Callable[[], Awaitable[T]], *, slow: float = SLOW_CALLBACK, wait: float = BLOCKED_WAIT
) -> T:
    """Run ``main()`` on a fresh loop in debug mode; fail the test if one step of the loop (a
    callback or a task step) computed for ``slow`` seconds or took ``wait`` seconds."""
    blocked: list[str] = []
    original = asyncio.events.Handle._run

    def timed(handle: asyncio.Handle) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        original(handle)
        cpu = time.thread_time() - cpu
        wall = time.perf_counter() - wall
        if cpu >= slow or wall >= wait:
            blocked.append(
                f"{handle!r} held the loop {wall * 1000:.0f} ms ({cpu * 1000:.0f} ms CPU)"
            )

    asyncio.events.Handle._run = timed  # type: ignore[method-assign, assignment]
    # A full collection of a long test session's heap takes 100+ ms wherever it falls: move
    # what exists now out of the collector's reach (until unfreeze), so a pause is the loop's
    # own work.
    gc.freeze()
    try:
        with asyncio.Runner(debug=True) as runner:
            result = runner.run(_call(main))
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]
        gc.unfreeze()
    if blocked:
        pytest.fail("the event loop was blocked:\n" + "\n".join(blocked), pytrace=False)
    return result


async def _call(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


async def collect(
    consumer: AsyncConsumer, count: int, *, ack: bool = True, deadline: float = ARRIVAL
) -> list[AsyncMessage]:
    """Receive until ``count`` messages arrived or ``deadline`` passed."""
    out: list[AsyncMessage] = []
    end = time.monotonic() + deadline
    while len(out) < count:
        remaining = end - time.monotonic()
        if remaining <= 0:
            break
        message = await consumer.receive(timeout=min(remaining, 1.0))
        if message is None:
            continue
        out.append(message)
        if ack:
            await message.ack()
    return out


async def assert_quiet(consumer: AsyncConsumer, wait: float = QUIET) -> None:
    extra = await consumer.receive(timeout=wait)
    assert extra is None, f"unexpected extra message {extra!r}"
