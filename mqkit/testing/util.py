"""Small helpers shared by the conformance tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from mqkit import Consumer, Message

#: Generous deadline for messages to arrive from a real broker.
ARRIVAL = 30.0
#: How long "no further message" is waited for.
QUIET = 1.5


def collect(
    consumer: Consumer, count: int, *, ack: bool = True, deadline: float = ARRIVAL
) -> list[Message]:
    """Receive until ``count`` messages arrived or ``deadline`` passed."""
    out: list[Message] = []
    end = time.monotonic() + deadline
    while len(out) < count:
        remaining = end - time.monotonic()
        if remaining <= 0:
            break
        message = consumer.receive(timeout=min(remaining, 1.0))
        if message is None:
            continue
        out.append(message)
        if ack:
            message.ack()
    return out


def assert_quiet(consumer: Consumer, wait: float = QUIET) -> None:
    extra = consumer.receive(timeout=wait)
    assert extra is None, f"unexpected extra message {extra!r}"


def drain_concurrently(
    consumers: Sequence[Consumer],
    total: int,
    produce: Callable[[], None],
    on_message: Callable[[int, Message], None],
    *,
    work: float,
) -> None:
    """Each consumer receives in its own thread while ``produce()`` runs.

    ``on_message(member_index, message)`` runs under one lock, then the member "works" for
    ``work`` seconds and acks; it ends once ``total`` messages were handled or time is up.
    """
    lock = threading.Lock()
    handled = 0
    done = threading.Event()

    def member(index: int) -> None:
        nonlocal handled
        while not done.is_set():
            message = consumers[index].receive(timeout=0.2)
            if message is None:
                continue
            with lock:
                on_message(index, message)
                handled += 1
                if handled >= total:
                    done.set()
            time.sleep(work)
            message.ack()

    threads = [threading.Thread(target=member, args=(i,)) for i in range(len(consumers))]
    for thread in threads:
        thread.start()
    try:
        produce()
        done.wait(ARRIVAL * 2)
    finally:
        done.set()
        for thread in threads:
            thread.join()
