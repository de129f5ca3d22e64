"""Small helpers shared by the conformance tests."""

from __future__ import annotations

import time

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
