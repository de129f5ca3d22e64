#!/usr/bin/env python3
"""mqkit side by side with the clients its users would pick instead, on real brokers.

RabbitMQ: raw pika, Kombu, FastStream (aio-pika), mqkit. Kafka: kafka-python, confluent-kafka,
FastStream (aiokafka), mqkit. Each client runs the same workloads:

- ``produce``: N persistent 1 KiB messages, every one confirmed by the broker; messages/s.
- ``consume``: the N messages back, each acked (RabbitMQ, prefetch 100) or committed one by one
  (Kafka); messages/s from the first message received to the last.
- ``latency``: end to end (send time in the body) at a fixed offered rate, producer and
  consumer running at once; p50 and p99 of every run.

Every run happens in a fresh subprocess (``--child``), on a fresh queue or topic, and measures
its own process CPU time (``time.process_time()``: every thread of the process, so a client's
I/O threads count) and the broker's (utime + stime from ``/proc/<pid>/stat``) around each
phase. Clients take turns in alternating order per repeat (ABCD, DCBA, ...). See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HEADER = struct.Struct(">qd")  # sequence number, send time (time.time())
SIZE = 1024  # bytes per body
WINDOW = 1000  # unconfirmed publishes in flight, where the client lets us choose
PREFETCH = 100  # RabbitMQ: unacked deliveries per consumer
EXCHANGE = "mqkit.peers"  # the peers' durable topic exchange (one binding per run's queue)
QUEUE_EXPIRES_MS = 120_000  # the peers' queues go away once unused, like mqkit's queue_expires
LINGER_MS = 5  # Kafka producers' batching wait: mqkit's default, confluent-kafka's default
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP = -1  # sequence number of the one untimed message sent before a throughput run


# -- bodies and what the consumer saw ------------------------------------------------------------


def body(seq: int) -> bytes:
    head = HEADER.pack(seq, time.time())
    return head + b"\x00" * (SIZE - len(head))


class Tally:
    """Received sequence numbers (duplicates counted), latencies, first and last arrival."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.first = 0.0
        self.last = 0.0
        self._lock = threading.Lock()

    def on_body(self, data: bytes) -> None:
        seq, sent_at = HEADER.unpack_from(data)
        if seq < 0:
            return  # the warm-up message: not counted
        now = time.time()
        with self._lock:
            self.seen[seq] += 1
            self.latencies.append(now - sent_at)
            self.last = time.perf_counter()
            if not self.first:
                self.first = self.last

    def complete(self) -> bool:
        return len(self.seen) >= self.expected


def due(start: float, seq: int, rate: float | None) -> float:
    """Seconds until message ``seq`` is due at ``rate`` msg/s from ``start`` (0: send now)."""
    if not rate:
        return 0.0
    return start + seq / rate - time.perf_counter()


# -- the clients: one class each, the same interface -----------------------------------------


@dataclass
class Target:
    """What one run works on: the broker's URL and this run's fresh names."""

    broker: str  # "rabbitmq" or "kafka"
    url: str  # the mqkit URL as given (the peers take host, port and login from it)
    name: str  # this run's queue / topic
    group: str  # this run's consumer group
    partitions: int  # Kafka: partitions of the run's topic


class Client(Protocol):
    def setup(self) -> None:
        """Connect, declare the queue or topic and the subscription (not timed)."""

    def produce(self, count: int, rate: float | None, first: int = 0) -> None:
        """Send bodies ``first`` .. ``first + count - 1`` (paced at ``rate`` msg/s if given),
        return once all are confirmed."""

    def consume(self, tally: Tally, deadline: float) -> None:
        """Receive and ack/commit each message until the tally is complete or the deadline."""

    def latency(self, count: int, rate: float, tally: Tally, deadline: float) -> None:
        """Produce at ``rate`` while consuming, until all arrived."""

    def close(self) -> None: ...


class SyncClient:
    """Latency for blocking clients: the consumer on a thread of its own, the producer here."""

    def consume(self, tally: Tally, deadline: float) -> None:
        raise NotImplementedError

    def produce(self, count: int, rate: float | None, first: int = 0) -> None:
        raise NotImplementedError

    def latency(self, count: int, rate: float, tally: Tally, deadline: float) -> None:
        errors: list[BaseException] = []

        def receive() -> None:
            try:
                self.consume(tally, deadline)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        self.produce(count, rate)
        thread.join(max(0.0, deadline - time.monotonic()) + 10)
        if errors:
            raise errors[0]


def amqp_url(url: str) -> str:
    """The AMQP URL without mqkit's query options (host, port, login and vhost stay)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


def kafka_bootstrap(url: str) -> str:
    return urlsplit(url).netloc


def peer_queue_arguments() -> dict[str, Any]:
    return {"x-queue-type": "quorum", "x-expires": QUEUE_EXPIRES_MS}


class PikaClient(SyncClient):
    """Raw pika 1.x: a ``SelectConnection`` publisher with up to ``WINDOW`` unconfirmed
    publishes (asynchronous confirms), a ``BlockingConnection`` consumer acking each message."""

    label = "pika"

    def __init__(self, target: Target) -> None:
        import pika

        self._pika = pika
        self._params = pika.URLParameters(amqp_url(target.url))
        self._queue = target.name
        self._conn: Any = None
        self._pub: Any = None
        self._channel: Any = None
        self._failure: list[BaseException] = []
        self._sent = self._confirmed = 0  # publishes and confirms on the channel

    def setup(self) -> None:
        pika = self._pika
        self._conn = pika.BlockingConnection(self._params)
        ch = self._conn.channel()
        ch.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        ch.queue_declare(self._queue, durable=True, arguments=peer_queue_arguments())
        ch.queue_bind(self._queue, EXCHANGE, routing_key=self._queue)
        ch.close()

        def on_error(conn: Any, exc: Any) -> None:
            self._failure.append(exc if isinstance(exc, BaseException) else RuntimeError(exc))
            conn.ioloop.stop()

        def on_channel(channel: Any) -> None:
            self._channel = channel
            channel.confirm_delivery(self._on_confirm, callback=lambda _f: pub.ioloop.stop())

        pub = pika.SelectConnection(
            self._params,
            on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
            on_open_error_callback=on_error,
            on_close_callback=on_error,
        )
        self._pub = pub
        pub.ioloop.start()  # until confirm mode is on
        if self._failure:
            raise self._failure[0]

    def produce(self, count: int, rate: float | None, first: int = 0) -> None:
        # _sent and _confirmed count on across calls, as the channel's delivery tags do
        self._first, self._end, self._rate, self._next = first, first + count, rate, first
        self._timer = False
        self._start = time.perf_counter()
        self._pub.ioloop.add_callback_threadsafe(self._pump)
        self._pub.ioloop.start()
        if self._failure:
            raise self._failure[0]

    def _pump(self) -> None:
        props = self._pika.BasicProperties(delivery_mode=2)
        publish = self._channel.basic_publish
        while self._next < self._end and self._sent - self._confirmed < WINDOW:
            wait = due(self._start, self._next - self._first, self._rate)
            if wait > 0:
                if not self._timer:
                    self._timer = True
                    self._pub.ioloop.call_later(wait, self._on_timer)
                return
            publish(EXCHANGE, self._queue, body(self._next), props)
            self._next += 1
            self._sent += 1
        if self._next >= self._end and self._confirmed >= self._sent:
            self._pub.ioloop.stop()

    def _on_timer(self) -> None:
        self._timer = False
        self._pump()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if type(method).__name__ != "Ack":
            self._failure.append(RuntimeError(f"publish not confirmed: {method}"))
        if method.multiple:
            self._confirmed = max(self._confirmed, method.delivery_tag)
        else:
            self._confirmed += 1
        self._pump()

    def consume(self, tally: Tally, deadline: float) -> None:
        channel = self._conn.channel()
        channel.basic_qos(prefetch_count=PREFETCH)

        def on_message(ch: Any, method: Any, _props: Any, data: bytes) -> None:
            tally.on_body(data)
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(self._queue, on_message)
        while not tally.complete() and time.monotonic() < deadline:
            self._conn.process_data_events(time_limit=0.05)
        channel.close()

    def close(self) -> None:
        if self._pub is not None and self._pub.is_open:
            self._failure.append(RuntimeError("closing"))  # keeps on_error from complaining
            self._pub.close()
            self._pub.ioloop.start()
        if self._conn is not None and self._conn.is_open:
            self._conn.close()


class KombuClient(SyncClient):
    """Kombu 5 over py-amqp with ``confirm_publish`` (each publish waits for its confirm, the
    transport's only confirmed mode), a ``Consumer`` with prefetch 100 acking each message."""

    label = "kombu"

    def __init__(self, target: Target) -> None:
        from kombu import Connection, Exchange, Queue

        url = amqp_url(target.url).replace("amqp://", "pyamqp://", 1)
        self._pconn = Connection(url, transport_options={"confirm_publish": True})
        self._cconn = Connection(url)
        self._exchange = Exchange(EXCHANGE, type="topic", durable=True)
        self._queue = Queue(
            target.name,
            self._exchange,
            routing_key=target.name,
            durable=True,
            queue_arguments=peer_queue_arguments(),
        )
        self._routing_key = target.name
        self._producer: Any = None

    def setup(self) -> None:
        from kombu import Producer

        self._cconn.connect()
        self._queue(self._cconn.default_channel).declare()
        self._pconn.connect()
        self._producer = Producer(self._pconn.channel(), exchange=self._exchange)

    def produce(self, count: int, rate: float | None, first: int = 0) -> None:
        publish = self._producer.publish
        start = time.perf_counter()
        for seq in range(first, first + count):
            wait = due(start, seq - first, rate)
            if wait > 0:
                time.sleep(wait)
            publish(
                body(seq),
                routing_key=self._routing_key,
                delivery_mode=2,
                content_type="application/octet-stream",
                content_encoding="binary",
                declare=[],
            )

    def consume(self, tally: Tally, deadline: float) -> None:
        from kombu import Consumer

        def on_message(message: Any) -> None:
            tally.on_body(message.body)
            message.ack()

        channel = self._cconn.channel()
        with Consumer(
            channel, queues=[self._queue], on_message=on_message, prefetch_count=PREFETCH
        ):
            while not tally.complete() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    self._cconn.drain_events(timeout=0.2)
        channel.close()

    def close(self) -> None:
        self._pconn.release()
        self._cconn.release()


class AsyncClient:
    """A client on asyncio: every call runs one coroutine on this client's event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()

    def _run(self, work: Any) -> Any:
        return self._loop.run_until_complete(work)

    async def _send(self, seq: int) -> Any:
        raise NotImplementedError

    async def _start(self) -> None:
        raise NotImplementedError

    async def _produce(self, count: int, rate: float | None, first: int = 0) -> None:
        """Up to ``WINDOW`` publishes awaiting their confirms at once."""
        window = asyncio.Semaphore(WINDOW)
        pending: set[asyncio.Task[Any]] = set()
        failures: list[BaseException] = []

        def done(task: asyncio.Task[Any]) -> None:
            window.release()
            pending.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        start = time.perf_counter()
        for seq in range(first, first + count):
            wait = due(start, seq - first, rate)
            if wait > 0:
                await asyncio.sleep(wait)
            await window.acquire()
            task = asyncio.ensure_future(self._send(seq))
            pending.add(task)
            task.add_done_callback(done)
        while pending:
            await asyncio.wait(list(pending))
        if failures:
            raise failures[0]

    def produce(self, count: int, rate: float | None, first: int = 0) -> None:
        self._run(self._produce(count, rate, first))

    async def _wait(self, tally: Tally, deadline: float) -> None:
        while not tally.complete() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def consume(self, tally: Tally, deadline: float) -> None:
        self._tally = tally

        async def go() -> None:
            await self._start()
            await self._wait(tally, deadline)

        self._run(go())

    def latency(self, count: int, rate: float, tally: Tally, deadline: float) -> None:
        self._tally = tally

        async def go() -> None:
            await self._start()
            await self._produce(count, rate)
            await self._wait(tally, deadline)

        self._run(go())


class FastStreamRabbitClient(AsyncClient):
    """FastStream's RabbitBroker (aio-pika): ``broker.publish(persist=True)`` on its default
    channel with publisher confirms, up to ``WINDOW`` awaited at once; a subscriber with
    ``AckPolicy.ACK`` (ack after the handler) and a channel with prefetch 100. Logging off."""

    label = "faststream"

    def __init__(self, target: Target) -> None:
        super().__init__()
        from faststream import AckPolicy
        from faststream.rabbit import (
            Channel,
            ExchangeType,
            QueueType,
            RabbitBroker,
            RabbitExchange,
            RabbitQueue,
        )

        self._tally = Tally(0)
        self._broker = RabbitBroker(amqp_url(target.url), logger=None)
        self._exchange = RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True)
        self._queue = RabbitQueue(
            target.name,
            queue_type=QueueType.QUORUM,
            durable=True,
            arguments={"x-expires": QUEUE_EXPIRES_MS},
            routing_key=target.name,
        )
        self._routing_key = target.name

        async def handle(data: bytes) -> None:
            self._tally.on_body(data)

        self._broker.subscriber(
            self._queue,
            self._exchange,
            ack_policy=AckPolicy.ACK,
            channel=Channel(prefetch_count=PREFETCH),
        )(handle)

    def setup(self) -> None:
        async def go() -> None:
            await self._broker.connect()
            exchange = await self._broker.declare_exchange(self._exchange)
            queue = await self._broker.declare_queue(self._queue)
            await queue.bind(exchange, routing_key=self._routing_key)

        self._run(go())

    async def _send(self, seq: int) -> Any:
        return await self._broker.publish(
            body(seq), exchange=self._exchange, routing_key=self._routing_key, persist=True
        )

    async def _start(self) -> None:
        await self._broker.start()

    def close(self) -> None:
        self._run(self._broker.stop())
        self._loop.close()


class FastStreamKafkaClient(AsyncClient):
    """FastStream's KafkaBroker (aiokafka): acks=all, idempotent, ``publish(no_confirm=True)``
    futures awaited with up to ``WINDOW`` outstanding; a subscriber with ``AckPolicy.ACK``,
    whose ack awaits aiokafka's ``commit()`` after each message. Logging off."""

    label = "faststream"

    def __init__(self, target: Target) -> None:
        super().__init__()
        from faststream import AckPolicy
        from faststream.kafka import KafkaBroker

        self._tally = Tally(0)
        self._topic = target.name
        self._broker = KafkaBroker(
            kafka_bootstrap(target.url),
            acks="all",
            enable_idempotence=True,
            linger_ms=LINGER_MS,
            logger=None,
        )

        async def handle(data: bytes) -> None:
            self._tally.on_body(data)

        self._broker.subscriber(
            target.name,
            group_id=target.group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
        )(handle)

    def setup(self) -> None:
        self._run(self._broker.connect())

    async def _send(self, seq: int) -> Any:
        future = await self._broker.publish(body(seq), self._topic, no_confirm=True)
        return await future

    async def _start(self) -> None:
        await self._broker.start()

    def close(self) -> None:
        self._run(self._broker.stop())
        self._loop.close()


class KafkaPythonClient(SyncClient):
    """kafka-python: ``KafkaProducer(acks="all", enable_idempotence=True)`` sent then flushed;
    a ``KafkaConsumer`` without auto-commit that commits each record's offset with the
    blocking ``commit({tp: offset + 1})`` after handling it."""

    label = "kafka-python"

    def __init__(self, target: Target) -> None:
        self._target = target
        self._bootstrap = kafka_bootstrap(target.url)
        self._producer: Any = None

    def setup(self) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=LINGER_MS,
        )
        self._producer.partitions_for(self._target.name)

    def produce(self, count: int, rate: float | None, first: int = 0) -> None:
        send, topic = self._producer.send, self._target.name
        futures = []
        start = time.perf_counter()
        for seq in range(first, first + count):
            wait = due(start, seq - first, rate)
            if wait > 0:
                time.sleep(wait)
            futures.append(send(topic, value=body(seq)))
        self._producer.flush()
        failed = [f for f in futures if f.failed()]
        if failed:
            raise RuntimeError(f"{len(failed)} sends failed: {failed[0].exception}")

    def consume(self, tally: Tally, deadline: float) -> None:
        from kafka import KafkaConsumer, OffsetAndMetadata

        consumer = KafkaConsumer(
            self._target.name,
            bootstrap_servers=self._bootstrap,
            group_id=self._target.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            while not tally.complete() and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for record in records:
                        tally.on_body(record.value)
                        consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
        finally:
            consumer.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


class ConfluentClient(SyncClient):
    """confluent-kafka: a ``Producer`` (acks=all, idempotent) with delivery callbacks, flushed
    at the end; a ``Consumer`` without auto-commit calling ``commit(message,
    asynchronous=False)`` after each message."""

    label = "confluent-kafka"

    def __init__(self, target: Target) -> None:
        self._target = target
        self._bootstrap = kafka_bootstrap(target.url)
        self._producer: Any = None
        self._failed: list[str] = []

    def setup(self) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(
            {
                "bootstrap.servers": self._bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": LINGER_MS,
            }
        )
        self._producer.list_topics(self._target.name, timeout=10)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def produce(self, count: int, rate: float | None, first: int = 0) -> None:
        producer, topic = self._producer, self._target.name
        start = time.perf_counter()
        for seq in range(first, first + count):
            wait = due(start, seq - first, rate)
            if wait > 0:
                time.sleep(wait)
            while True:
                try:
                    producer.produce(topic, body(seq), on_delivery=self._delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        if producer.flush(60) or self._failed:
            raise RuntimeError(f"sends failed or unconfirmed: {self._failed[:1]}")

    def consume(self, tally: Tally, deadline: float) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                "group.id": self._target.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([self._target.name])
        try:
            while not tally.complete() and time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is None:
                    continue
                if message.error():
                    raise RuntimeError(str(message.error()))
                tally.on_body(message.value())
                consumer.commit(message=message, asynchronous=False)
        finally:
            consumer.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)


class MqkitClient(SyncClient):
    """mqkit's public API: ``producer.send`` for each body then ``flush()``; a group consumer's
    ``receive`` and ``ack`` for each message (raw bytes, no serialization)."""

    label = "mqkit"

    def __init__(self, target: Target) -> None:
        self._target = target
        self._url = target.url
        if target.broker == "rabbitmq":
            self._url = with_default(self._url, prefetch=str(PREFETCH))
        self._consuming: Any = None
        self._producing: Any = None
        self._consumer: Any = None
        self._producer: Any = None

    def setup(self) -> None:
        import mqkit

        self._consuming = mqkit.connect(self._url, serializer="bytes")
        if self._target.broker == "rabbitmq":
            # the group's queue must exist before the first message, or the exchange drops it
            self._subscribe()
        self._producing = mqkit.connect(self._url, serializer="bytes")
        self._producer = self._producing.producer()

    def produce(self, count: int, rate: float | None, first: int = 0) -> None:
        send, topic = self._producer.send, self._target.name
        start = time.perf_counter()
        for seq in range(first, first + count):
            wait = due(start, seq - first, rate)
            if wait > 0:
                time.sleep(wait)
            send(topic, body(seq))
        self._producer.flush()

    def _subscribe(self) -> None:
        self._consumer = self._consuming.consumer(self._target.name, group=self._target.group)

    def consume(self, tally: Tally, deadline: float) -> None:
        # Kafka: subscribed here, as the raw clients do (a group starts at the earliest offset),
        # so that its poller thread does not fetch while the producer is timed
        if self._consumer is None:
            self._subscribe()
        receive = self._consumer.receive
        while not tally.complete() and time.monotonic() < deadline:
            message = receive(timeout=0.2)
            if message is None:
                continue
            tally.on_body(message.body)
            message.ack()

    def close(self) -> None:
        for broker in (self._producing, self._consuming):
            if broker is not None:
                broker.close()


def with_default(url: str, **options: str) -> str:
    """``url`` with query options added where it does not set them already."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in options.items():
        query.setdefault(name, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


PEERS: dict[str, list[type[Any]]] = {
    "rabbitmq": [PikaClient, KombuClient, FastStreamRabbitClient],
    "kafka": [KafkaPythonClient, ConfluentClient, FastStreamKafkaClient],
}


def client_class(broker: str, label: str) -> type[Any]:
    if label.startswith("mqkit"):
        return MqkitClient
    for cls in PEERS[broker]:
        if cls.label == label:
            return cls
    raise SystemExit(f"no client {label!r} for {broker}")


# -- one run, in a subprocess of its own -----------------------------------------------------


def broker_ticks(pid: int | None) -> int | None:
    """utime + stime of the broker process, in clock ticks, or None without a pid."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


class Meter:
    """Client and broker CPU time over one phase."""

    def __init__(self, pid: int | None) -> None:
        self._pid = pid
        self._cpu = time.process_time()
        self._ticks = broker_ticks(pid)
        self._wall = time.perf_counter()

    def done(self, count: int) -> dict[str, float | None]:
        cpu = time.process_time() - self._cpu
        ticks, end = self._ticks, broker_ticks(self._pid)
        broker = None if ticks is None or end is None else (end - ticks) / CLK_TCK
        n = max(1, count)
        return {
            "seconds": time.perf_counter() - self._wall,
            "client_cpu_us": round(cpu / n * 1e6, 1),
            "broker_cpu_us": None if broker is None else round(broker / n * 1e6, 1),
        }


def integrity(tally: Tally) -> dict[str, int]:
    received = len(tally.seen)
    return {
        "sent": tally.expected,
        "received": received,
        "lost": tally.expected - received,
        "duplicated": sum(n - 1 for n in tally.seen.values()),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def delete_topic(bootstrap: str, name: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([name])
    except Exception:  # best effort: the run's result does not depend on it
        pass
    finally:
        admin.close()


def child(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One client's run of one workload; the result rows."""
    target = Target(**spec["target"])
    cls = client_class(target.broker, spec["client"])
    count, pid = int(spec["messages"]), spec["broker_pid"]
    deadline = time.monotonic() + float(spec["timeout"])
    if target.broker == "kafka":
        create_topic(kafka_bootstrap(target.url), target.name, target.partitions)
    client: Client = cls(target)
    rows: list[dict[str, Any]] = []
    try:
        client.setup()
        if spec["workload"] == "throughput":
            # One message first, not timed: every client has looked up the topic and its
            # partitions (mqkit does that at the first send, the raw clients in setup) and
            # has a connection, so the timed part measures sending only.
            client.produce(1, None, first=WARMUP)
            meter = Meter(pid)
            client.produce(count, None)
            produced = meter.done(count)
            tally = Tally(count)
            meter = Meter(pid)
            client.consume(tally, deadline)
            consumed = meter.done(len(tally.seen))
            span = tally.last - tally.first
            rows.append({"test": "produce", **produced, "rate": count / produced["seconds"]})
            rows.append(
                {
                    "test": "consume",
                    **consumed,
                    "rate": (len(tally.seen) - 1) / span if span > 0 else 0.0,
                    **integrity(tally),
                }
            )
            rows[0].update(integrity(tally))
        else:
            rate = float(spec["rate"])
            tally = Tally(count)
            meter = Meter(pid)
            client.latency(count, rate, tally, deadline)
            measured = meter.done(len(tally.seen))
            rows.append(
                {
                    "test": "latency",
                    **measured,
                    "rate": len(tally.seen) / measured["seconds"],
                    "p50_ms": round(percentile(tally.latencies, 0.50), 2),
                    "p99_ms": round(percentile(tally.latencies, 0.99), 2),
                    **integrity(tally),
                }
            )
    finally:
        client.close()
        if target.broker == "kafka":
            delete_topic(kafka_bootstrap(target.url), target.name)
    return rows


# -- the orchestration: every client, every workload, alternating order ------------------------


@dataclass
class Row:
    """One client's runs of one test."""

    broker: str
    test: str
    client: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def find_pid(port: int) -> int | None:
    """The pid listening on ``port`` (psutil, else ``ss -ltnp``), None if not visible."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == "LISTEN" and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except Exception:
        pass
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    except OSError:
        return None
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[3].rsplit(":", 1)[-1] == str(port) and "pid=" in line:
            return int(line.split("pid=", 1)[1].split(",", 1)[0])
    return None


def run_child(spec: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit {proc.returncode}: {tail}")
    rows: list[dict[str, Any]] = json.loads(lines[-1])["rows"]
    return rows


def plan(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(broker, URL, client labels) for each broker measured."""
    brokers: list[tuple[str, str, list[str]]] = []
    extras: dict[str, list[str]] = {"rabbitmq": [], "kafka": []}
    for url in args.mqkit_url:
        scheme = urlsplit(url).scheme
        extras["kafka" if scheme.startswith("kafka") else "rabbitmq"].append(url)
    for broker, url in (("rabbitmq", args.rabbitmq_url), ("kafka", args.kafka_url)):
        if not url or (args.only and args.only != broker):
            continue
        labels = [cls.label for cls in PEERS[broker]] + ["mqkit"]
        labels += [f"mqkit {redact(u)}" for u in extras[broker]]
        if args.clients:
            labels = [label for label in labels if label.split()[0] in args.clients]
        brokers.append((broker, url, labels))
    return brokers


def redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def url_for(label: str, default: str, extras: list[str]) -> str:
    for url in extras:
        if label == f"mqkit {redact(url)}":
            return url
    return default


def latency_rate(args: argparse.Namespace, broker: str) -> float:
    """The offered rate of ``broker``'s latency runs."""
    rate: float = args.kafka_latency_rate if broker == "kafka" else args.latency_rate
    return rate


def measure(args: argparse.Namespace) -> list[Row]:
    rows: dict[tuple[str, str, str], Row] = {}
    for broker, url, labels in plan(args):
        port = urlsplit(url).port or (5672 if broker == "rabbitmq" else 9092)
        pid = getattr(args, f"{broker}_pid") or find_pid(port)
        print(f"# {broker}: broker pid {pid}", file=sys.stderr)
        for workload in ("throughput", "latency"):
            for turn in range(args.repeat):
                order = labels if turn % 2 == 0 else labels[::-1]
                for label in order:
                    run = uuid.uuid4().hex[:8]
                    name = f"peers.{label.split()[0]}.{run}"
                    target = Target(broker, url_for(label, url, args.mqkit_url), name, name, 3)
                    target.partitions = args.kafka_partitions
                    count = args.messages if workload == "throughput" else args.latency_messages
                    spec = {
                        "target": asdict(target),
                        "client": label,
                        "workload": workload,
                        "messages": count,
                        "rate": latency_rate(args, broker),
                        "timeout": args.timeout,
                        "broker_pid": pid,
                    }
                    tests = ("produce", "consume") if workload == "throughput" else ("latency",)
                    for test in tests:
                        rows.setdefault((broker, test, label), Row(broker, test, label))
                    try:
                        results = run_child(spec, args.timeout + 120)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        for test in tests:
                            rows[(broker, test, label)].errors.append(str(exc))
                        print(f"{broker} {workload} {label}: FAILED {exc}", file=sys.stderr)
                        continue
                    for result in results:
                        rows[(broker, result["test"], label)].runs.append(result)
                        print(
                            f"{broker} {result['test']} {label}: {brief(result)}", file=sys.stderr
                        )
    return list(rows.values())


def brief(result: dict[str, Any]) -> str:
    text = f"{result['rate']:.0f} msg/s, cpu {result['client_cpu_us']} us/msg"
    if "p99_ms" in result:
        text += f", p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
    if result.get("lost") or result.get("duplicated"):
        text += f", LOST {result['lost']} DUPLICATED {result['duplicated']}"
    return text


# -- the report --------------------------------------------------------------------------------


def median_of(row: Row, key: str) -> float | None:
    values = [r[key] for r in row.runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(mine: float | None, peers: list[float], higher_is_better: bool) -> str:
    if mine is None or not peers:
        return "-"
    best = max(peers) if higher_is_better else min(peers)
    return f"{mine / best:.2f}" if best else "-"


def table(rows: list[Row], broker: str, test: str) -> list[str]:
    chosen = [r for r in rows if r.broker == broker and r.test == test]
    if not chosen:
        return []
    peers = [r for r in chosen if not r.client.startswith("mqkit") and r.runs]
    lines = [f"### {broker}: {test}", ""]
    if test == "latency":
        best_p50 = [v for r in peers if (v := median_of(r, "p50_ms")) is not None]
        best_p99 = [v for r in peers if (v := median_of(r, "p99_ms")) is not None]
        lines += [
            "| client | p50 ms (median) | p99 ms (median) | p99 ms, every run | client CPU "
            "µs/msg | broker CPU µs/msg | lost / dup | mqkit ÷ best peer (p50, p99) |",
            "|---|--:|--:|---|--:|--:|--:|--:|",
        ]
        for r in chosen:
            p50, p99 = median_of(r, "p50_ms"), median_of(r, "p99_ms")
            mine = r.client.startswith("mqkit")
            cmp = f"{ratio(p50, best_p50, False)}, {ratio(p99, best_p99, False)}" if mine else ""
            lines.append(
                f"| {r.client} | {fmt(p50, 2)} | {fmt(p99, 2)} | "
                f"{', '.join(fmt(x['p99_ms'], 2) for x in r.runs) or 'failed'} | "
                f"{fmt(median_of(r, 'client_cpu_us'))} | {fmt(median_of(r, 'broker_cpu_us'))} | "
                f"{lost_dup(r)} | {cmp} |"
            )
    else:
        best = [v for r in peers if (v := median_of(r, "rate")) is not None]
        lines += [
            "| client | msg/s (median) | msg/s, every run | client CPU µs/msg | broker CPU "
            "µs/msg | lost / dup | mqkit ÷ best peer |",
            "|---|--:|---|--:|--:|--:|--:|",
        ]
        for r in chosen:
            rate = median_of(r, "rate")
            cmp = ratio(rate, best, True) if r.client.startswith("mqkit") else ""
            lines.append(
                f"| {r.client} | {fmt(rate)} | "
                f"{', '.join(fmt(x['rate']) for x in r.runs) or 'failed'} | "
                f"{fmt(median_of(r, 'client_cpu_us'))} | {fmt(median_of(r, 'broker_cpu_us'))} | "
                f"{lost_dup(r)} | {cmp} |"
            )
    failed = [f"{r.client}: {e}" for r in chosen for e in r.errors]
    lines += [""] + [f"- failed run, {f}" for f in failed] + ([""] if failed else [])
    return lines


def lost_dup(row: Row) -> str:
    lost = sum(r.get("lost", 0) for r in row.runs)
    dup = sum(r.get("duplicated", 0) for r in row.runs)
    text = f"{lost} / {dup}"
    return f"**{text}**" if lost or dup else text


def report(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"{args.messages:,} messages of {SIZE} B per throughput run, {args.latency_messages:,} "
        f"at {args.latency_rate:g} msg/s (Kafka: {args.kafka_latency_rate:g}) per latency "
        f"run, {args.repeat} run(s) per client; "
        "rates are the median run's, CPU the median run's per message.",
        "",
    ]
    for broker in ("rabbitmq", "kafka"):
        for test in ("produce", "consume", "latency"):
            lines += table(rows, broker, test)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--rabbitmq-url", help="amqp://user:pw@host:port/vhost (mqkit's URL)")
    p.add_argument("--kafka-url", help="kafka://host:port (mqkit's URL; the peers use host:port)")
    p.add_argument(
        "--mqkit-url",
        action="append",
        default=[],
        help="an extra mqkit URL to compare (its own row; repeatable)",
    )
    p.add_argument("--only", choices=("rabbitmq", "kafka"))
    p.add_argument(
        "--clients",
        type=lambda text: set(text.split(",")),
        help="comma-separated clients to run (default: all), e.g. pika,mqkit; "
        "'mqkit' includes the --mqkit-url rows",
    )
    p.add_argument("--messages", type=int, default=10_000, help="per throughput run")
    p.add_argument("--latency-messages", type=int, default=2_500, help="per latency run")
    p.add_argument("--latency-rate", type=float, default=500.0, help="offered msg/s")
    p.add_argument(
        "--kafka-latency-rate",
        type=float,
        default=100.0,
        help="offered msg/s on Kafka, below the ~170 msg/s a consumer committing each message "
        "reaches on Apache Kafka 4.1 (more measures a growing backlog, not latency)",
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--kafka-partitions", type=int, default=3, help="of each run's topic")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a run may take")
    p.add_argument("--rabbitmq-pid", type=int, help="broker pid (default: from the port)")
    p.add_argument("--kafka-pid", type=int, help="broker pid (default: from the port)")
    p.add_argument("--json", type=Path, help="write every run and the summary here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)
    if not args.rabbitmq_url and not args.kafka_url:
        p.error("give --rabbitmq-url and/or --kafka-url")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(json.dumps({"rows": child(json.loads(argv[1]))}))
        return 0
    args = parse_args(argv)
    rows = measure(args)
    text = report(rows, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
