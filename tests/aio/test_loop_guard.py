"""The async suite's loop-blocking detector fails a test that blocks the loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from mqkit.testing.aio import run


def test_a_blocked_loop_fails_the_test() -> None:
    async def blocks() -> None:
        time.sleep(0.3)

    with pytest.raises(pytest.fail.Exception, match="event loop was blocked"):
        run(blocks)


def test_waiting_off_the_loop_passes() -> None:
    async def waits() -> int:
        await asyncio.to_thread(time.sleep, 0.12)
        await asyncio.sleep(0.05)
        return 7

    assert run(waits) == 7


def test_computing_on_the_loop_fails_the_test() -> None:
    async def computes() -> None:
        end = time.thread_time() + 0.08
        while time.thread_time() < end:
            pass

    with pytest.raises(pytest.fail.Exception, match="ms CPU"):
        run(computes)
