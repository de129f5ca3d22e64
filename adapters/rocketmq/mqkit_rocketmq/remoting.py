"""``rocketmq+remoting://`` — RocketMQ 4.x (and 5.x) through the name server and the remoting
protocol, with the ctypes binding of the native ``librocketmq`` (rocketmq-client-cpp).

Works with either Python binding (see :mod:`mqkit_rocketmq._drivers`): Apache's
``rocketmq-client-python`` 2.0.0 (needs librocketmq 2.x installed on the machine) or the
third-party ``rocketmq`` 0.4.4 wheel that bundles a pre-2.0 librocketmq.

Mapping: a producer sends synchronously (each ``send`` is confirmed, so ``flush`` has nothing
to wait for); keyed messages go through the orderly send with the key as sharding key, so one
key always lands on one queue. A consumer is a clustering ``PushConsumer`` of the group whose
callback hands each message to ``receive`` and waits for its ``ack``/``nack``:
``CONSUME_SUCCESS`` or ``RECONSUME_LATER`` (RocketMQ's retry topic redelivers it later with
``reconsume_times`` + 1; an orderly consumer retries it locally, keeping key order). At most
``prefetch`` messages are in flight per consumer (the native consume thread count).

Verified here only up to connection errors: no RocketMQ 4.x broker was available.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from mqkit.config import BrokerURL
from mqkit.errors import BrokerUnavailable, ClosedError, ConfigError, MqkitError
from mqkit.message import Delivery, OutgoingMessage
from mqkit.options import Options
from mqkit.spi import Features
from mqkit_rocketmq import _codec
from mqkit_rocketmq._drivers import load_remoting

log = logging.getLogger(__name__)

_client, FLAVOUR = load_remoting()
client: Any = _client
DEFAULT_PORT = 9876


def _key_hash(key: str) -> int:
    """A stable non-negative 31-bit int for the 0.4.x binding's hashing queue selector."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _ask_name_server(host: str, port: int, timeout: float) -> None:
    """One remoting round trip: request code 106, expect a response frame."""
    header = json.dumps(
        {
            "code": 106,  # GET_BROKER_CLUSTER_INFO
            "extFields": {},
            "flag": 0,
            "language": "PYTHON",
            "opaque": 1,
            "serializeTypeCurrentRPC": "JSON",
            "version": 0,
        }
    ).encode()
    frame = (4 + len(header)).to_bytes(4, "big") + len(header).to_bytes(4, "big") + header
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame)

        def read(count: int) -> bytes:
            data = b""
            while len(data) < count:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(count - len(data))
                except TimeoutError:
                    raise TimeoutError(
                        f"accepted the connection but did not answer within {timeout} s"
                    ) from None
                if not chunk:
                    raise ConnectionError("closed the connection without answering")
                data += chunk
            return data

        length = int.from_bytes(read(4), "big")
        if not 4 <= length <= 16 << 20:
            raise ValueError(f"answered with a frame of {length} bytes: not a RocketMQ name server")
        body = read(length)
        header_length = int.from_bytes(body[:4], "big") & 0xFFFFFF
        reply = json.loads(body[4 : 4 + header_length] or b"{}")
        if not isinstance(reply, dict) or "code" not in reply:
            raise ValueError("answered something that is not a RocketMQ remoting response")


class RemotingBackend:
    def __init__(self, url: BrokerURL, options: Mapping[str, Any]) -> None:
        opts = Options(f"{url.scheme}://", options)
        if not url.hosts:
            raise ConfigError(
                f"{url}: no name server; write rocketmq+remoting://namesrv:{DEFAULT_PORT}"
            )
        self.addresses = [(h, p or DEFAULT_PORT) for h, p in url.hosts]
        self.namesrv = ";".join(f"{h}:{p}" for h, p in self.addresses)
        self.where = f"RocketMQ name server at {', '.join(f'{h}:{p}' for h, p in self.addresses)}"
        if url.username is not None and url.password is None:
            raise ConfigError(f"{url}: give both the access key and the secret key")
        self.credentials = (url.username, url.password) if url.username else None
        self.channel = opts.str("channel", "")
        self.send_timeout = opts.float("send_timeout", 3.0, minimum=0.1)
        self.connect_timeout = opts.float("connect_timeout", 5.0, minimum=0.1)
        self.prefetch = opts.int("prefetch", 1, minimum=1)
        self.orderly = opts.bool("orderly", True)
        self.producer_group = opts.str("producer_group", f"mqkit-producer-{os.getpid()}")
        opts.done()
        self.features = Features(
            key_order_on_nack=self.orderly,
            delayed_redelivery=False,
            persistent=True,
            max_body_size=4 << 20,
        )
        self._closed = False
        self.probe()

    def probe(self) -> None:
        """Fail fast unless a name server answers a remoting request (``GET_BROKER_CLUSTER_INFO``).

        The native client would only log and retry for a long time (a send to a silent name
        server fails after about a minute).
        """
        errors = []
        for host, port in self.addresses:
            try:
                _ask_name_server(host, port, self.connect_timeout)
                return
            except (OSError, ValueError) as exc:
                errors.append(f"{host}:{port}: {exc}")
        raise BrokerUnavailable(f"cannot reach the {self.where} ({'; '.join(errors)})")

    def error(self, exc: BaseException, doing: str) -> MqkitError:
        if isinstance(exc, MqkitError):
            return exc
        return BrokerUnavailable(
            f"{doing} via the {self.where} failed: {type(exc).__name__}: {exc}"
        )

    def producer(self, options: Mapping[str, Any]) -> RemotingProducer:
        if self._closed:
            raise ClosedError("broker is closed")
        Options("rocketmq+remoting producer", options).done()
        return RemotingProducer(self)

    def consumer(
        self, topics: Sequence[str], group: str, options: Mapping[str, Any]
    ) -> RemotingConsumer:
        if self._closed:
            raise ClosedError("broker is closed")
        opts = Options("rocketmq+remoting consumer", options)
        prefetch = opts.int("prefetch", self.prefetch, minimum=1)
        opts.done()
        return RemotingConsumer(self, topics, group, prefetch=prefetch)

    def close(self) -> None:
        self._closed = True


class RemotingProducer:
    def __init__(self, backend: RemotingBackend) -> None:
        self._backend = backend
        self._plain: Any = None
        self._orderly: Any = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mqkit-rocketmq-send")
        self._closed = False

    def _producer(self, orderly: bool) -> Any:
        with self._lock:
            current = self._orderly if orderly else self._plain
            if current is not None:
                return current
            b = self._backend
            group = b.producer_group + ("-orderly" if orderly else "")
            timeout_ms = int(b.send_timeout * 1000)
            try:
                if FLAVOUR == "apache":
                    producer = client.Producer(group, orderly=orderly, timeout=timeout_ms)
                    producer.set_name_server_address(b.namesrv)
                else:
                    producer = client.Producer(group, timeout=timeout_ms)
                    producer.set_namesrv_addr(b.namesrv)
                if b.credentials:
                    producer.set_session_credentials(*b.credentials, b.channel)
                producer.start()
            except Exception as exc:
                raise b.error(exc, "starting a producer") from None
            if orderly:
                self._orderly = producer
            else:
                self._plain = producer
            return producer

    def send(self, message: OutgoingMessage) -> None:
        if self._closed:
            raise ClosedError("producer is closed")
        topic = _codec.rocketmq_name("topic", message.topic)
        encoded = _codec.encode(message)
        rmsg = client.Message(topic)
        rmsg.set_body(encoded.body)
        if encoded.keys:
            rmsg.set_keys(encoded.keys[0])
        props = dict(encoded.properties)
        if message.key is not None:
            props[_codec.PROP_KEY] = json.dumps(message.key)
        for name, value in props.items():
            rmsg.set_property(name, value)
        group = encoded.message_group

        def send() -> None:
            if group is None:
                self._producer(False).send_sync(rmsg)
            elif FLAVOUR == "apache":
                self._producer(True).send_orderly_with_sharding_key(rmsg, group)
            else:
                self._producer(False).send_orderly(rmsg, _key_hash(group))

        # The native send can block for a minute when the cluster does not answer: bound it.
        future = self._executor.submit(send)
        limit = self._backend.send_timeout + self._backend.connect_timeout
        try:
            future.result(timeout=limit)
        except MqkitError:
            raise
        except FutureTimeout:
            raise BrokerUnavailable(
                f"sending to {message.topic!r} via the {self._backend.where}: no answer within "
                f"{limit:g} s (the send may still complete)"
            ) from None
        except Exception as exc:
            raise self._backend.error(exc, f"sending to {message.topic!r}") from None

    def flush(self, timeout: float | None) -> None:
        """Every send was synchronous: nothing is left to confirm."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False)
        for producer in (self._plain, self._orderly):
            if producer is not None:
                try:
                    producer.shutdown()
                except Exception as exc:
                    log.warning("RocketMQ producer shutdown: %s", exc)


class _InFlight:
    __slots__ = ("delivery", "done", "ok")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.done = threading.Event()
        self.ok = False


class RemotingConsumer:
    """A PushConsumer whose callback waits for ``ack``/``nack`` of what it handed out."""

    def __init__(
        self, backend: RemotingBackend, topics: Sequence[str], group: str, *, prefetch: int
    ) -> None:
        self._backend = backend
        self._names = {_codec.rocketmq_name("topic", t): t for t in topics}
        self._queue: queue.Queue[_InFlight | None] = queue.Queue()
        self._inflight: set[_InFlight] = set()
        self._lock = threading.Lock()
        self._closed = False
        name = _codec.rocketmq_name("group", group)
        try:
            self._consumer = client.PushConsumer(name, orderly=backend.orderly)
            if FLAVOUR == "apache":
                self._consumer.set_name_server_address(backend.namesrv)
            else:
                self._consumer.set_namesrv_addr(backend.namesrv)
            if backend.credentials:
                self._consumer.set_session_credentials(*backend.credentials, backend.channel)
            self._consumer.set_thread_count(prefetch)
            self._consumer.set_message_batch_max_size(1)
            for topic in self._names:
                self._consumer.subscribe(topic, self._on_message)
            self._consumer.start()
        except Exception as exc:
            raise backend.error(exc, f"starting consumer group {group!r}") from None

    def _on_message(self, message: Any) -> Any:
        """Native consume thread: hand the message over and wait for its fate."""
        ok = False
        try:
            if not self._closed:
                item = _InFlight(self._delivery(message))
                with self._lock:
                    self._inflight.add(item)
                self._queue.put(item)
                while not item.done.wait(0.5):
                    if self.closed:
                        break
                ok = item.ok
                with self._lock:
                    self._inflight.discard(item)
        except Exception:
            log.exception("RocketMQ consume callback failed; the message will be redelivered")
            ok = False
        if FLAVOUR == "apache":
            status = client.ConsumeStatus
            return status.CONSUME_SUCCESS if ok else status.RECONSUME_LATER
        if not ok:  # the 0.4.x binding maps an exception to RECONSUME_LATER
            raise RuntimeError("mqkit: message nacked or consumer closed")
        return None

    def _delivery(self, message: Any) -> Delivery:
        names = []
        raw_names = message.get_property(_codec.PROP_HEADER_NAMES)
        if raw_names:
            names = json.loads(raw_names)
        props = {
            name: message.get_property(name) or ""
            for name in [
                *names,
                _codec.PROP_ID,
                _codec.PROP_TS,
                _codec.PROP_KEY,
                _codec.PROP_HEADERS,
                _codec.PROP_HEADER_NAMES,
                _codec.PROP_EMPTY,
            ]
            if message.get_property(name)
        }
        if _codec.PROP_ID not in props:  # a foreign message: its properties cannot be listed
            props[_codec.PROP_HEADER_NAMES] = "[]"
        keys = (message.keys or "").split()
        decoded = _codec.decode(
            message.body,
            props,
            message_group=None,
            keys=keys,
            message_id=message.id,
            born_ms=int(message.born_timestamp or 0),
        )
        return Delivery(
            topic=self._names.get(message.topic, message.topic),
            body=decoded.body,
            key=decoded.key,
            headers=decoded.headers,
            id=decoded.id,
            timestamp=decoded.timestamp,
            attempt=int(message.reconsume_times or 0) + 1,
            handle=None,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def receive(self, timeout: float | None) -> Delivery | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                return None
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if item is None or self._closed:
                return None
            return Delivery(
                topic=item.delivery.topic,
                body=item.delivery.body,
                key=item.delivery.key,
                headers=item.delivery.headers,
                id=item.delivery.id,
                timestamp=item.delivery.timestamp,
                attempt=item.delivery.attempt,
                handle=item,
            )

    def _settle(self, delivery: Delivery, ok: bool) -> None:
        item: _InFlight = delivery.handle
        item.ok = ok
        item.done.set()

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, True)

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        # Without requeue the group drops it: consumed, as far as RocketMQ is concerned.
        self._settle(delivery, not requeue)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        with self._lock:
            waiting = list(self._inflight)
        for item in waiting:  # not acked: RECONSUME_LATER, RocketMQ delivers it again
            item.done.set()
        try:
            self._consumer.shutdown()
        except Exception as exc:
            log.warning("RocketMQ consumer shutdown: %s", exc)


def open_backend(url: BrokerURL, options: Mapping[str, Any]) -> RemotingBackend:
    return RemotingBackend(url, options)
