"""The raw-stomp.py baseline for ``mqkit bench`` (entry point ``mqkit.bench``: ``stomp`` and
``stomp+ssl``).

It does the same durable work as the adapter, written the way a stomp.py user would:

* produce: persistent ``SEND`` frames to the virtual topic ``/topic/VirtualTopic.<topic>``,
  each with a ``receipt``, at most ``max_in_flight`` (1000) unconfirmed at a time; ``produce``
  returns once every receipt came back (mqkit: ``flush``);
* subscribe: one connection, a ``client-individual`` subscription per topic to the group's
  queue ``/queue/Consumer.<group>.VirtualTopic.<topic>`` with the same
  ``activemq.prefetchSize`` (``prefetch``, 100), waiting for each SUBSCRIBE's receipt;
* consume: every message is acked with an ``ACK`` carrying a receipt, and the next message is
  taken only once that receipt came (mqkit's default ``confirm_acks=true``; with
  ``confirm_acks=false`` in the URL the ACK goes without a receipt, like the adapter);
* both connections get the same socket setting as the adapter's (``TCP_NODELAY``, and
  ``TCP_QUICKACK`` re-armed before every read: see :func:`mqkit_activemq.link.tune_socket`);
  without it a stock ActiveMQ's Nagle algorithm holds every ACK's RECEIPT back for up to 40 ms
  and the raw side would crawl at ~50 acks/s, which would flatter mqkit.

What it leaves out is what mqkit adds: mqkit's headers (the envelope's id, the timestamp, user
header escaping; the raw SEND carries only ``persistent`` and ``receipt``), heart-beats,
keeping unconfirmed messages for a resend, reconnection, connection generations, the
``Delivery`` objects and the local queue ``receive()`` reads from. The URL's options are read
as the adapter reads them (so a typo is still a ``ConfigError``); those that only matter to
mqkit's extra machinery (``heartbeat``, ``reconnect_max_delay``, ``scheduler``, ``dlq``) are
ignored.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import stomp  # type: ignore[import-untyped]

from mqkit.config import BrokerURL
from mqkit_activemq.link import tune_socket
from mqkit_activemq.settings import Endpoint, Settings, check_url, endpoint
from mqkit_activemq.wire import group_destination, topic_destination

OnBody = Callable[[bytes], None]


class _Listener:
    """Counts receipts, keeps MESSAGE frames, remembers the first ERROR or disconnect."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.receipts = 0
        self.error: str | None = None
        self.messages: queue.Queue[Any] = queue.Queue()

    def on_receipt(self, frame: Any) -> None:
        with self.cv:
            self.receipts += 1
            self.cv.notify_all()

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame)

    def on_error(self, frame: Any) -> None:
        with self.cv:
            self.error = self.error or frame.headers.get("message", "ERROR frame")
            self.cv.notify_all()

    def on_disconnected(self) -> None:
        with self.cv:
            self.error = self.error or "disconnected"
            self.cv.notify_all()

    def wait_receipts(self, count: int, timeout: float) -> None:
        """Until at least ``count`` receipts came in total."""
        with self.cv:
            if not self.cv.wait_for(lambda: self.receipts >= count or self.error, timeout):
                raise TimeoutError(f"no receipt from ActiveMQ within {timeout:g} s")
            if self.receipts < count:
                raise ConnectionError(f"ActiveMQ: {self.error}")


def _connect(where: Endpoint) -> tuple[Any, _Listener]:
    conn = stomp.Connection12(
        list(where.hosts),
        prefer_localhost=False,
        try_loopback_connect=False,
        timeout=where.connect_timeout,
        auto_decode=False,
    )
    if where.ssl is not None:
        conn.set_ssl(for_hosts=list(where.hosts), **where.ssl)
    tune_socket(conn.transport)  # the adapter's socket setting, so the comparison is fair
    listener = _Listener()
    conn.set_listener("bench", listener)
    conn.connect(where.username, where.password, wait=True)
    return conn, listener


class RawStompClient:
    """One benchmark thread's raw stomp.py connections (a producer's, a consumer's)."""

    def __init__(self, url: BrokerURL) -> None:
        check_url(url)
        settings = Settings.read(f"{url.redacted()} bench", url.params)
        self._endpoint = endpoint(url, settings)
        self._prefetch = settings.prefetch
        self._confirm_acks = settings.confirm_acks
        self._timeout = settings.send_timeout
        self._window = settings.max_in_flight
        self._ids = itertools.count(1)
        self._producer: tuple[Any, _Listener] | None = None
        self._consumer: tuple[Any, _Listener] | None = None

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        conn, listener = self._consumer = _connect(self._endpoint)
        for index, topic in enumerate(topics):
            conn.subscribe(
                group_destination(topic, group),
                id=f"s{index}",
                ack="client-individual",
                headers={"activemq.prefetchSize": str(self._prefetch), "receipt": "sub"},
            )
        listener.wait_receipts(len(topics), self._timeout)  # the group's queues exist now

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        if self._producer is None:
            self._producer = _connect(self._endpoint)
        conn, listener = self._producer
        destination = topic_destination(topic)
        sent = listener.receipts
        for body in bodies:
            if sent - listener.receipts >= self._window:
                listener.wait_receipts(sent - self._window + 1, self._timeout)
            sent += 1
            conn.send(
                destination,
                body,
                headers={"persistent": "true", "receipt": f"p{next(self._ids)}"},
            )
        listener.wait_receipts(sent, self._timeout)

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        assert self._consumer is not None, "subscribe first"
        conn, listener = self._consumer
        confirm = self._confirm_acks
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                frame = listener.messages.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            on_body(frame.body)
            if confirm:
                expected = listener.receipts + 1
                conn.ack(frame.headers["ack"], receipt=f"a{next(self._ids)}")
                listener.wait_receipts(expected, self._timeout)
            else:
                conn.ack(frame.headers["ack"])

    def close(self) -> None:
        for side in (self._producer, self._consumer):
            if side is not None and side[0].is_connected():
                side[0].disconnect()
        self._producer = self._consumer = None


def raw_client(url: BrokerURL) -> RawStompClient:
    """``mqkit.bench`` entry point: the raw baseline for ``stomp://`` and ``stomp+ssl://``."""
    return RawStompClient(url)
