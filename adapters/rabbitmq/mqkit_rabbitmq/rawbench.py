"""The raw-pika baseline for ``mqkit bench`` (entry point ``mqkit.bench``: ``amqp``/``amqps``).

It does the same durable work as the adapter, written the way a pika user would: persistent
messages to a durable topic exchange, a durable quorum queue per group bound to it, publisher
confirms with many publishes in flight (``SelectConnection``), and a ``BlockingConnection``
consumer that acks every message. What it leaves out is what mqkit adds: the I/O threads, the
per-key partitions and their locks, attempt counting and reconnection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pika
import pika.channel
import pika.frame
from pika.exchange_type import ExchangeType

from mqkit.config import BrokerURL

from ._common import Settings, read_settings

OnBody = Callable[[bytes], None]

#: Publishes in flight before waiting for confirms; the adapter's default max_inflight.
WINDOW = 1000


class RawPikaClient:
    """One connection's worth of raw pika: subscribe, produce (confirmed), consume (acked)."""

    def __init__(self, url: BrokerURL) -> None:
        known = ("connect_timeout", "cafile", "tls_verify", "queue_expires", "prefetch")
        options = {k: v for k, v in url.params.items() if k in known}
        self._s: Settings = read_settings(url, options)[0]
        self._queues: list[str] = []
        self._conn: pika.BlockingConnection | None = None

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        self._conn = pika.BlockingConnection(self._s.parameters())
        channel = self._conn.channel()
        for topic in topics:
            queue = f"raw:{topic}:{group}"
            channel.exchange_declare(topic, exchange_type=ExchangeType("topic"), durable=True)
            channel.queue_declare(queue, durable=True, arguments=self._s.queue_arguments())
            channel.queue_bind(queue, topic, routing_key="#")
            self._queues.append(queue)

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        produce_confirmed(self._s.parameters(), topic, bodies)

    def consume(self, on_body: OnBody, until: Callable[[], bool], deadline: float) -> None:
        assert self._conn is not None, "subscribe first"
        channel = self._conn.channel()
        channel.basic_qos(prefetch_count=self._s.prefetch)

        def callback(ch: Any, method: Any, _props: Any, body: bytes) -> None:
            on_body(body)
            ch.basic_ack(method.delivery_tag)

        for queue in self._queues:
            channel.basic_consume(queue, callback)
        while not until() and time.monotonic() < deadline:
            self._conn.process_data_events(time_limit=0.05)  # type: ignore[arg-type]
        channel.close()

    def close(self) -> None:
        if self._conn is not None and self._conn.is_open:
            self._conn.close()


def produce_confirmed(
    parameters: pika.ConnectionParameters, topic: str, bodies: Iterable[bytes]
) -> int:
    """Publish persistent messages with at most ``WINDOW`` unconfirmed; return the count."""
    source = iter(bodies)
    state = {"sent": 0, "confirmed": 0, "done": False}
    failure: list[BaseException] = []

    def pump(channel: pika.channel.Channel) -> None:
        while not state["done"] and state["sent"] - state["confirmed"] < WINDOW:
            body = next(source, None)
            if body is None:
                state["done"] = True
                break
            channel.basic_publish(topic, "u", body, pika.BasicProperties(delivery_mode=2))
            state["sent"] += 1
        if state["done"] and state["confirmed"] >= state["sent"]:
            channel.connection.close()

    def on_confirm(frame: pika.frame.Method[Any], channel: pika.channel.Channel) -> None:
        method = frame.method
        if method.multiple:
            state["confirmed"] = max(state["confirmed"], method.delivery_tag)
        else:
            state["confirmed"] += 1
        pump(channel)

    def on_channel(channel: pika.channel.Channel) -> None:
        channel.exchange_declare(
            topic,
            exchange_type=ExchangeType("topic"),
            durable=True,
            callback=lambda _f: channel.confirm_delivery(
                lambda frame: on_confirm(frame, channel), callback=lambda _f: pump(channel)
            ),
        )

    def on_error(conn: Any, exc: Any) -> None:
        failure.append(exc if isinstance(exc, BaseException) else RuntimeError(str(exc)))
        conn.ioloop.stop()

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    conn = pika.SelectConnection(
        parameters,
        on_open_callback=on_open,
        on_open_error_callback=on_error,
        on_close_callback=lambda c, _exc: c.ioloop.stop(),
    )
    conn.ioloop.start()
    if failure:
        raise failure[0]
    return state["sent"]


def raw_client(url: BrokerURL) -> RawPikaClient:
    """``mqkit.bench`` entry point: the raw baseline for ``amqp://`` URLs."""
    return RawPikaClient(url)
