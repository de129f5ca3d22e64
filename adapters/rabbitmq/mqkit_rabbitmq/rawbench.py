"""The raw-pika baseline for ``mqkit bench`` (entry point ``mqkit.bench``: ``amqp``/``amqps``).

It does the same durable work as the adapter, written the way a pika user would: persistent
messages to a durable topic exchange, a durable quorum queue per group bound to it, publisher
confirms with many publishes in flight (one ``SelectConnection`` kept open across topics), and a
``BlockingConnection`` consumer that acks every message (``prefetch`` per queue consumer, as
mqkit's default). What it leaves out is what mqkit adds: the I/O threads, the
per-key partitions and their locks, attempt counting and reconnection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pika
import pika.channel
import pika.frame
from pika.exchange_type import ExchangeType

from mqkit.adapter import BrokerURL

from .settings import Endpoint, Settings
from .wire import queue_arguments

OnBody = Callable[[bytes], None]

#: Publishes in flight before waiting for confirms; the adapter's default max_inflight.
WINDOW = 1000


class RawPikaClient:
    """One connection's worth of raw pika: subscribe, produce (confirmed), consume (acked)."""

    def __init__(self, url: BrokerURL) -> None:
        known = (
            "connect_timeout",
            "tls",
            "ca_file",
            "cert_file",
            "key_file",
            "tls_insecure_skip_verify",
            "queue_expires",
            "prefetch",
        )
        options = {k: v for k, v in url.params.items() if k in known}
        self._settings = Settings.read(url.redacted(), options)
        self._endpoint = Endpoint.of(url, self._settings)
        self._queues: list[str] = []
        self._conn: pika.BlockingConnection | None = None
        self._publisher: ConfirmedPublisher | None = None

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        self._conn = pika.BlockingConnection(self._endpoint.parameters())
        channel = self._conn.channel()
        for topic in topics:
            queue = f"raw:{topic}:{group}"
            channel.exchange_declare(topic, exchange_type=ExchangeType("topic"), durable=True)
            channel.queue_declare(
                queue, durable=True, arguments=queue_arguments(self._settings.queue_expires)
            )
            channel.queue_bind(queue, topic, routing_key="#")
            self._queues.append(queue)

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        if self._publisher is None:
            self._publisher = ConfirmedPublisher(self._endpoint.parameters())
        self._publisher.publish(topic, bodies)

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        assert self._conn is not None, "subscribe first"
        channel = self._conn.channel()
        channel.basic_qos(prefetch_count=self._settings.prefetch)

        def callback(ch: Any, method: Any, _props: Any, body: bytes) -> None:
            on_body(body)
            ch.basic_ack(method.delivery_tag)

        for queue in self._queues:
            channel.basic_consume(queue, callback)
        while not until() and time.monotonic() < deadline:
            self._conn.process_data_events(time_limit=0.05)  # type: ignore[arg-type]
        channel.close()

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
        if self._conn is not None and self._conn.is_open:
            self._conn.close()


class ConfirmedPublisher:
    """Persistent publishes with at most ``WINDOW`` unconfirmed, on one ``SelectConnection`` kept
    open across calls (as a pika user would keep it, and as mqkit's producer does)."""

    def __init__(self, parameters: pika.ConnectionParameters) -> None:
        self._parameters = parameters
        self._conn: pika.SelectConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._topic = ""
        self._source: Iterator[bytes] = iter(())
        self._sent = 0  # delivery tags used on the channel so far
        self._confirmed = 0
        self._done = True
        self._failure: list[BaseException] = []
        self._closing = False

    def publish(self, topic: str, bodies: Iterable[bytes]) -> int:
        """Publish every body to ``topic``, returning once all are confirmed; the count."""
        self._topic, self._source, self._done = topic, iter(bodies), False
        first = self._sent
        if self._channel is None:
            self._conn = pika.SelectConnection(
                self._parameters,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_error,
                on_close_callback=self._on_error,
            )
        else:
            self._declare()
        assert self._conn is not None
        self._conn.ioloop.start()
        if self._failure:
            raise self._failure[0]
        return self._sent - first

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            self._closing = True
            conn.close()
            conn.ioloop.start()  # until _on_error (the close callback) stops it

    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: pika.channel.Channel) -> None:
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._declare())
        self._channel = channel

    def _declare(self) -> None:
        assert self._channel is not None
        self._channel.exchange_declare(
            self._topic,
            exchange_type=ExchangeType("topic"),
            durable=True,
            callback=lambda _f: self._pump(),
        )

    def _pump(self) -> None:
        channel = self._channel
        assert channel is not None and self._conn is not None
        while not self._done and self._sent - self._confirmed < WINDOW:
            body = next(self._source, None)
            if body is None:
                self._done = True
                break
            channel.basic_publish(self._topic, "u", body, pika.BasicProperties(delivery_mode=2))
            self._sent += 1
        if self._done and self._confirmed >= self._sent:
            self._conn.ioloop.stop()

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        if method.multiple:
            self._confirmed = max(self._confirmed, method.delivery_tag)
        else:
            self._confirmed += 1
        self._pump()

    def _on_error(self, conn: Any, exc: Any) -> None:
        if not self._closing and not self._failure:
            self._failure.append(exc if isinstance(exc, BaseException) else RuntimeError(str(exc)))
        self._channel = None
        conn.ioloop.stop()


def raw_client(url: BrokerURL) -> RawPikaClient:
    """``mqkit.bench`` entry point: the raw baseline for ``amqp://`` URLs."""
    return RawPikaClient(url)
