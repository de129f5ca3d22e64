"""Small helpers shared by the conformance tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

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


def closed_port() -> int:
    """A loopback port nothing listens on (for "connection refused" errors)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word: a hung broker or a
    service of another kind, for "no answer within the timeout" errors."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
