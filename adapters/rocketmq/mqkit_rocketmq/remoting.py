"""``rocketmq+remoting://`` — RocketMQ through the name server and the remoting protocol
(RocketMQ 4.x, and 5.x brokers, which still speak it), with the native ``librocketmq``
(rocketmq-client-cpp) through ctypes.

Either Python binding may be installed (see :mod:`mqkit_rocketmq._drivers`): the third-party
``rocketmq`` 0.4.4 wheel, which bundles a librocketmq 1.0.1, or Apache's
``rocketmq-client-python`` 2.0.0 with a librocketmq 2.x on the machine. The adapter uses
neither binding's classes (the 0.4.4 consumer turns a callback that raises into a success, and
neither sends a body with zero bytes): it loads the library the binding found and calls the C
API both library versions have.

Producer: each ``send`` is synchronous (confirmed by the broker, so ``flush`` has nothing to
wait for); a keyed message goes to the queue its key hashes to, so a key stays on one queue.

Consumer: an *orderly* clustering push consumer, with a client instance of its own. It locks
its queues on the broker, and its callback hands a message to ``receive()`` and waits until the
application settles it; the queue's next message comes only then, so a consumer holds at most
one unsettled message per queue (``features.independent_keys`` is false). ``ack()`` writes the
queue's position to the broker before it returns; ``nack()`` hands the message out again from
this consumer after ``delay``, ``attempt`` + 1, ahead of the rest of its queue (RocketMQ's
orderly consumer retries locally as well, without counting); ``close()`` answers
``RECONSUME_LATER`` for what is not settled, so the group gets it again. librocketmq's
concurrent consumer cannot settle messages one by one, so ``orderly=false`` is refused.

Verified against Apache RocketMQ 5.3.3 (name server and broker) with the bundled
librocketmq 1.0.1: the conformance suite and ``tests/rocketmq/test_rocketmq_remoting.py``.
What that found, and what the adapter does about it, is in docs/rocketmq.md. The Apache 2.0.0
binding was not run against a broker: its native library is in no package registry here.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from mqkit.config import BrokerURL
from mqkit.errors import BrokerUnavailable, ClosedError, ConfigError, MqkitError
from mqkit.message import Delivery, OutgoingMessage
from mqkit.options import Options
from mqkit.spi import Features
from mqkit_rocketmq import _codec, admin
from mqkit_rocketmq._drivers import load_remoting

log = logging.getLogger(__name__)

_client, FLAVOUR = load_remoting()
DEFAULT_PORT = 9876
#: Queues of a topic that ``auto_create`` creates (``mqadmin updateTopic``'s default).
AUTO_CREATE_QUEUES = 8
#: A broker's default ``maxMessageSize``.
MAX_BODY_SIZE = 4 << 20
#: Seconds a broker keeps a queue locked for an orderly consumer that stopped renewing the lock
#: (``rocketmq.broker.rebalance.lockMaxLiveTime``).
LOCK_LIFETIME = 60.0
#: Messages given back by closed consumers whose delivery count a backend remembers.
SEEN_LIMIT = 50_000
#: Seconds ``close()`` waits for a consumer to leave its group.
LEAVE_TIMEOUT = 30.0

_OK = 0
_GET_CONSUMER_LIST_BY_GROUP = 38
_UNLOCK_BATCH_MQ = 42
_CONSUME_SUCCESS = 0
_RECONSUME_LATER = 1
_CLUSTERING = 1  # CMessageModel: BROADCASTING = 0, CLUSTERING = 1


class _SendResult(ctypes.Structure):
    _fields_ = [
        ("sendStatus", ctypes.c_int),
        ("msgId", ctypes.c_char * 256),
        ("offset", ctypes.c_longlong),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_SELECTOR = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _load_library() -> ctypes.CDLL:
    """The librocketmq the installed binding loaded, with our own function declarations."""
    import importlib

    path = importlib.import_module("rocketmq.ffi")._DYLIB_PATH
    lib = ctypes.CDLL(path)
    p, s, i, ll = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_longlong
    signatures: dict[str, tuple[list[Any], Any]] = {
        "GetLatestErrorMessage": ([], s),
        "CreateMessage": ([s], p),
        "DestroyMessage": ([p], i),
        "SetMessageKeys": ([p, s], i),
        "SetByteMessageBody": ([p, s, i], i),
        "SetMessageProperty": ([p, s, s], i),
        "GetMessageTopic": ([p], s),
        "GetMessageKeys": ([p], s),
        "GetMessageBody": ([p], p),
        "GetMessageProperty": ([p, s], s),
        "GetMessageId": ([p], s),
        "GetMessageQueueId": ([p], i),
        "GetMessageReconsumeTimes": ([p], i),
        "GetMessageBornTimestamp": ([p], ll),
        "GetMessageQueueOffset": ([p], ll),
        "CreateProducer": ([s], p),
        "DestroyProducer": ([p], i),
        "StartProducer": ([p], i),
        "ShutdownProducer": ([p], i),
        "SetProducerNameServerAddress": ([p, s], i),
        "SetProducerInstanceName": ([p, s], i),
        "SetProducerSessionCredentials": ([p, s, s, s], i),
        "SetProducerSendMsgTimeout": ([p, i], i),
        "SetProducerMaxMessageSize": ([p, i], i),
        "SendMessageSync": ([p, p, ctypes.POINTER(_SendResult)], i),
        "SendMessageOrderly": ([p, p, _SELECTOR, p, i, ctypes.POINTER(_SendResult)], i),
        "CreatePushConsumer": ([s], p),
        "DestroyPushConsumer": ([p], i),
        "StartPushConsumer": ([p], i),
        "ShutdownPushConsumer": ([p], i),
        "SetPushConsumerNameServerAddress": ([p, s], i),
        "SetPushConsumerInstanceName": ([p, s], i),
        "SetPushConsumerSessionCredentials": ([p, s, s, s], i),
        "SetPushConsumerThreadCount": ([p, i], i),
        "SetPushConsumerMessageBatchMaxSize": ([p, i], i),
        "SetPushConsumerMessageModel": ([p, i], i),
        "Subscribe": ([p, s, s], i),
        "RegisterMessageCallbackOrderly": ([p, _CALLBACK], i),
        "UnregisterMessageCallbackOrderly": ([p], i),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = result
    return lib


_lib = _load_library()
#: librocketmq keeps the push consumers' callbacks in one global map without a lock.
_register_lock = threading.Lock()
_instances = itertools.count(1)
_WHERE = re.compile(r",error:-?\d+,in file <[^>]*> line:\d+")


def _instance_name(kind: str) -> str:
    """A client instance of its own for every producer and consumer: librocketmq refuses a
    second producer or consumer of one group in one client instance, and the broker tells the
    members of a group apart by client id (``ip@instance``)."""
    return f"mqkit-{kind}-{os.getpid()}-{next(_instances)}"


def _native_error() -> str:
    text = _lib.GetLatestErrorMessage()
    message = text.decode("utf-8", "replace") if text else "no error message"
    # "…,error:-1,in file </tmp/rocketmq-client-cpp/src/…> line:379": where it was raised
    return _WHERE.sub("", message.removeprefix("msg: ")).strip()


class _NativeError(Exception):
    pass


def _check(status: int, doing: str) -> None:
    if status != _OK:
        raise _NativeError(f"{doing}: {_native_error()} (status {status})")


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def _body(message: int) -> bytes:
    """The body of a received message, zero bytes included.

    The C API returns only ``getBody().c_str()``. The bundled librocketmq 1.0.1 is built with
    the pre-C++11 libstdc++ ABI, whose ``std::string`` keeps its length 24 bytes before the
    characters (``_Rep``: length, capacity, reference count); the length is taken from there
    and checked against the capacity and the terminating zero. Any other library gives the
    characters up to the first zero byte.
    """
    pointer = _lib.GetMessageBody(message)
    if not pointer:
        return b""
    if FLAVOUR == "bundled":
        length, capacity = (ctypes.c_size_t * 2).from_address(pointer - 24)
        # Within the allocation (capacity + 1 bytes) only, and zero-terminated where it ends.
        terminated = length <= capacity < 1 << 31 and (
            ctypes.c_ubyte.from_address(pointer + length).value == 0
        )
        if terminated:
            return ctypes.string_at(pointer, length)
        log.warning("librocketmq: unexpected string layout; reading the body up to a zero byte")
    return ctypes.string_at(pointer)


def _key_hash(key: str) -> int:
    """A stable non-negative 31-bit int: the queue of a key is this modulo the queue count."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _queue_of(queues: int, _message: int, arg: int) -> int:
    """librocketmq's queue selector: ``arg`` points to the key's hash."""
    return int(ctypes.cast(arg, ctypes.POINTER(ctypes.c_int))[0]) % queues


_select_queue = _SELECTOR(_queue_of)


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
        self.prefetch = opts.int("prefetch", 16, minimum=1)
        if not opts.bool("orderly", True):
            raise ConfigError(
                f"{url}: orderly=false is not supported: librocketmq's concurrent push consumer "
                "hands a whole pulled batch (up to 32 messages) to one callback and settles it "
                "as a whole, so one nack, or a close, would send every message of the batch back "
                "through the retry topic, acked ones included"
            )
        self.auto_create = opts.bool("auto_create", False)
        self.producer_group = opts.str("producer_group", "mqkit-producer")
        opts.done()
        self.features = Features(
            key_order_on_nack=True,
            delayed_redelivery=True,
            persistent=True,
            max_body_size=MAX_BODY_SIZE,
            independent_keys=False,
            crash_hold=LOCK_LIFETIME,
        )
        self._closed = False
        self._lock = threading.Lock()
        self._created: set[str] = set()
        #: (group, topic, queue, offset) → deliveries the application saw of a message that a
        #: closed orderly consumer gave back: RocketMQ counts no local retries.
        self._seen: OrderedDict[tuple[str, str, int, int], int] = OrderedDict()
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
        text = str(exc)
        if "No route info" in text or "not exist" in text:
            return ConfigError(
                f"{doing} via the {self.where} failed: {text}; RocketMQ topics are created by "
                "an administrator (mqadmin updateTopic -n NAMESRV:9876 -c CLUSTER -t TOPIC), "
                "or let mqkit create them with the URL option auto_create=true"
            )
        return BrokerUnavailable(f"{doing} via the {self.where} failed: {text}")

    def admin(self, action: Callable[[str], Any], doing: str) -> Any:
        """Run an admin request against the first name server that answers."""
        errors = []
        for host, port in self.addresses:
            try:
                return action(f"{host}:{port}")
            except OSError as exc:
                errors.append(f"{host}:{port}: {exc}")
            except admin.AdminError as exc:
                raise BrokerUnavailable(f"{doing} via the {self.where}: {exc}") from None
        raise BrokerUnavailable(f"{doing}: cannot reach the {self.where} ({'; '.join(errors)})")

    def ensure_topic(self, topic: str) -> None:
        """``auto_create``: create ``topic`` (a RocketMQ name) unless this backend did already."""
        if not self.auto_create or topic in self._created:
            return
        with self._lock:
            if topic in self._created:
                return
            self.admin(
                lambda ns: admin.ensure_topic(
                    ns, topic, queues=AUTO_CREATE_QUEUES, timeout=self.connect_timeout
                ),
                f"creating topic {topic!r}",
            )
            self._created.add(topic)

    def remember_seen(self, key: tuple[str, str, int, int], deliveries: int) -> None:
        with self._lock:
            self._seen[key] = deliveries
            self._seen.move_to_end(key)
            while len(self._seen) > SEEN_LIMIT:
                self._seen.popitem(last=False)

    def seen_before(self, key: tuple[str, str, int, int]) -> int:
        with self._lock:
            return self._seen.pop(key, 0)

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
        self._handle: int | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mqkit-rocketmq-send")
        self._closed = False

    def _producer(self) -> int:
        with self._lock:
            if self._handle is not None:
                return self._handle
            b = self._backend
            handle: int = _lib.CreateProducer(b.producer_group.encode())
            if not handle:
                raise BrokerUnavailable("librocketmq could not create a producer")
            try:
                _check(_lib.SetProducerNameServerAddress(handle, b.namesrv.encode()), "name server")
                _check(
                    _lib.SetProducerInstanceName(handle, _instance_name("producer").encode()),
                    "instance name",
                )
                _check(
                    _lib.SetProducerSendMsgTimeout(handle, int(b.send_timeout * 1000)), "timeout"
                )
                # librocketmq 1.0.1 refuses bodies over 128 KiB unless told; brokers take 4 MiB.
                _check(_lib.SetProducerMaxMessageSize(handle, MAX_BODY_SIZE), "max message size")
                if b.credentials:
                    access, secret = b.credentials
                    _check(
                        _lib.SetProducerSessionCredentials(
                            handle, access.encode(), (secret or "").encode(), b.channel.encode()
                        ),
                        "credentials",
                    )
                _check(_lib.StartProducer(handle), "starting the producer")
            except Exception as exc:
                _lib.DestroyProducer(handle)
                raise b.error(exc, "starting a producer") from None
            self._handle = handle
            return handle

    def send(self, message: OutgoingMessage) -> None:
        if self._closed:
            raise ClosedError("producer is closed")
        topic = _codec.rocketmq_name("topic", message.topic)
        encoded = _codec.encode(message)
        props = dict(encoded.properties)
        if message.key is not None:
            props[_codec.PROP_KEY] = json.dumps(message.key)
        self._backend.ensure_topic(topic)
        selector_arg = None if message.key is None else ctypes.c_int(_key_hash(message.key))

        def send() -> None:
            producer = self._producer()
            native = _lib.CreateMessage(topic.encode())
            try:
                _check(
                    _lib.SetByteMessageBody(native, encoded.body, len(encoded.body)), "body"
                )
                if encoded.keys:
                    _check(_lib.SetMessageKeys(native, encoded.keys[0].encode()), "keys")
                for name, value in props.items():
                    _check(
                        _lib.SetMessageProperty(native, name.encode(), value.encode()),
                        f"property {name!r}",
                    )
                result = _SendResult()
                if selector_arg is None:
                    status = _lib.SendMessageSync(producer, native, ctypes.byref(result))
                else:
                    status = _lib.SendMessageOrderly(
                        producer, native, _select_queue, ctypes.addressof(selector_arg), 3,
                        ctypes.byref(result),
                    )
                _check(status, "send")
            finally:
                _lib.DestroyMessage(native)

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
        self._executor.shutdown(wait=True)
        if self._handle is not None:
            status = _lib.ShutdownProducer(self._handle)
            if status != _OK:
                log.warning("RocketMQ producer shutdown: %s", _native_error())
            _lib.DestroyProducer(self._handle)
            self._handle = None


class _Positions:
    """Writes an orderly consumer's queue positions to the broker as its messages are settled.

    librocketmq commits a position to its own table when the consume callback returns and
    sends that table to the brokers every 5 s and on shutdown: a consumer process that dies
    would see up to 5 s of acked messages again, and on a clean shutdown it unlocks its queues
    before it writes their positions, so a member that takes a queue over at that moment reads
    an old one. An orderly consumer settles a queue's messages one after the other, so after
    the message at offset *n* the queue's position is *n* + 1: written here, synchronously,
    before ``ack()`` returns. Only for queues the consumer can attribute to a broker (a topic
    on one master broker; the C API does not say which broker a message came from).
    """

    def __init__(self, backend: RemotingBackend, group: str, topics: Sequence[str]) -> None:
        self._group = group
        self._timeout = backend.connect_timeout
        self._brokers: dict[tuple[str, int], str] = {}
        self._connections: dict[str, admin.Session] = {}
        self._lock = threading.Lock()
        for topic in topics:
            queues = backend.admin(
                functools.partial(admin.read_queues, topic=topic, timeout=self._timeout),
                f"looking up topic {topic!r}",
            )
            if len({name for name, _, _ in queues}) == 1:
                self._brokers.update({(topic, q): address for _, address, q in queues})
            else:
                log.info(
                    "RocketMQ topic %r is on several brokers: positions are written by "
                    "librocketmq every 5 s only",
                    topic,
                )

    def commit(self, topic: str, queue_id: int, offset: int) -> None:
        address = self._brokers.get((topic, queue_id))
        if address is None:
            return
        fields = {
            "consumerGroup": self._group,
            "topic": topic,
            "queueId": str(queue_id),
            "commitOffset": str(offset),
        }
        with self._lock:
            for attempt in (1, 2):
                try:
                    connection = self._connections.get(address)
                    if connection is None:
                        connection = admin.Session(address, timeout=self._timeout)
                        self._connections[address] = connection
                    reply, _ = connection.call(admin.UPDATE_CONSUMER_OFFSET, fields)
                except (OSError, admin.AdminError) as exc:
                    stale = self._connections.pop(address, None)
                    if stale is not None:
                        stale.close()
                    if attempt == 2:
                        log.warning(
                            "RocketMQ: writing the position of %s queue %d: %s (librocketmq "
                            "writes it within 5 s)",
                            topic, queue_id, exc,
                        )
                    continue
                if reply["code"] != admin.SUCCESS:
                    log.warning("RocketMQ: writing the position of %s queue %d: %s",
                                topic, queue_id, reply.get("remark"))
                return

    def close(self) -> None:
        with self._lock:
            for connection in self._connections.values():
                connection.close()
            self._connections.clear()


class _InFlight:
    """One message held by a native consume thread until the application decides."""

    __slots__ = ("attempt", "decided", "delay", "offset", "outcome", "queue_id", "seen",
                 "template", "topic")

    def __init__(self, template: Delivery, topic: str, queue_id: int, offset: int) -> None:
        self.template = template
        self.topic = topic
        self.queue_id = queue_id
        self.offset = offset
        self.attempt = template.attempt
        self.seen = False  # the application received the current attempt
        self.decided = threading.Event()
        self.outcome = ""  # "ack", "drop", "retry"
        self.delay = 0.0


class RemotingConsumer:
    """A push consumer whose native callback waits for the ``ack``/``nack`` of its message."""

    def __init__(
        self, backend: RemotingBackend, topics: Sequence[str], group: str, *, prefetch: int
    ) -> None:
        self._backend = backend
        self._names = {_codec.rocketmq_name("topic", t): t for t in topics}
        self._group = _codec.rocketmq_name("group", group)
        self._queue: queue.Queue[_InFlight | None] = queue.Queue()
        self._closing = threading.Event()
        self._closed = False
        self._handle: int | None = None
        self._waiting: set[_InFlight] = set()
        self._waiting_lock = threading.Lock()
        self._instance = _instance_name("consumer")
        self._client_id: str | None = None
        self._broker_addresses: list[str] | None = None
        for topic in self._names:
            backend.ensure_topic(topic)
        if backend.auto_create:
            backend.admin(
                lambda ns: admin.ensure_group(ns, self._group, timeout=backend.connect_timeout),
                f"creating consumer group {group!r}",
            )
        for topic in self._names:
            self._start_at_end(topic)
        self._positions = _Positions(backend, self._group, list(self._names))
        self._callback = _CALLBACK(self._on_message)
        handle = _lib.CreatePushConsumer(self._group.encode())
        if not handle:
            raise BrokerUnavailable("librocketmq could not create a push consumer")
        try:
            _check(_lib.SetPushConsumerNameServerAddress(handle, backend.namesrv.encode()), "ns")
            _check(
                _lib.SetPushConsumerInstanceName(handle, self._instance.encode()), "instance name"
            )
            _check(_lib.SetPushConsumerMessageModel(handle, _CLUSTERING), "message model")
            if backend.credentials:
                access, secret = backend.credentials
                _check(
                    _lib.SetPushConsumerSessionCredentials(
                        handle, access.encode(), (secret or "").encode(), backend.channel.encode()
                    ),
                    "credentials",
                )
            _check(_lib.SetPushConsumerThreadCount(handle, prefetch), "thread count")
            _check(_lib.SetPushConsumerMessageBatchMaxSize(handle, 1), "batch size")
            for topic in self._names:
                _check(_lib.Subscribe(handle, topic.encode(), b"*"), f"subscribing to {topic}")
            with _register_lock:
                _check(_lib.RegisterMessageCallbackOrderly(handle, self._callback), "callback")
                _check(_lib.StartPushConsumer(handle), "starting the consumer")
        except Exception as exc:
            self._destroy(handle)
            raise backend.error(exc, f"starting consumer group {group!r}") from None
        self._handle = handle
        self._client_id = self._find_client_id()

    def _start_at_end(self, topic: str) -> None:
        """A group new to ``topic`` starts at its current end: every message sent after
        ``consumer()`` returns is the group's, however late the rebalance assigns the queues."""
        try:
            self._backend.admin(
                lambda ns: admin.start_group_at_end(
                    ns, self._group, topic, timeout=self._backend.connect_timeout
                ),
                f"positioning group {self._group!r} on topic {topic!r}",
            )
        except BrokerUnavailable as exc:
            if "code 26" in str(exc) and not self._backend.auto_create:
                # The group does not exist yet (the broker creates it on the consumer's first
                # heartbeat): librocketmq's own CONSUME_FROM_LAST_OFFSET applies.
                log.debug("RocketMQ: %s", exc)
                return
            if "code 17" in str(exc) or "No topic route" in str(exc):
                raise ConfigError(
                    f"topic {self._names[topic]!r} ({topic!r}) does not exist on the "
                    f"{self._backend.where}; RocketMQ topics are created by an administrator "
                    f"(mqadmin updateTopic -n NAMESRV:9876 -c CLUSTER -t {topic}), or let mqkit "
                    "create them with the URL option auto_create=true"
                ) from None
            raise

    def _brokers(self) -> list[str]:
        if self._broker_addresses is None:
            timeout = self._backend.connect_timeout
            brokers = self._backend.admin(
                lambda ns: admin.master_brokers(ns, timeout=timeout), "listing the brokers"
            )
            self._broker_addresses = list(brokers.values())
        return self._broker_addresses

    def _find_client_id(self) -> str | None:
        """This consumer's client id as the brokers know it (``pid-ip@instance``)."""
        timeout = self._backend.connect_timeout
        try:
            for address in self._brokers():
                reply, body = admin.call(
                    address,
                    _GET_CONSUMER_LIST_BY_GROUP,
                    {"consumerGroup": self._group},
                    timeout=timeout,
                )
                if reply["code"] == admin.SUCCESS and body:
                    for client_id in json.loads(body).get("consumerIdList", []):
                        if str(client_id).endswith("@" + self._instance):
                            return str(client_id)
        except (OSError, ValueError, MqkitError, admin.AdminError) as exc:
            log.warning("RocketMQ: cannot find the client id of %s: %s", self._instance, exc)
        return None

    def _unlock_queues(self) -> None:
        """Release this consumer's queue locks on the brokers.

        librocketmq 1.0.1 leaves the first queue of each broker locked when it shuts down (its
        ``Rebalance::unlockAll`` never adds that queue to the unlock request): the next
        consumer of the group could not consume that queue until the broker's lock expires
        (60 s). Unlocking is per client id, so other members' locks are untouched.
        """
        if self._client_id is None:
            return
        timeout = self._backend.connect_timeout
        topics = [*self._names, f"%RETRY%{self._group}"]
        per_broker: dict[str, list[dict[str, Any]]] = {}
        try:
            for topic in topics:
                try:
                    queues = self._backend.admin(
                        functools.partial(admin.read_queues, topic=topic, timeout=timeout),
                        f"looking up topic {topic!r}",
                    )
                except BrokerUnavailable:
                    continue  # e.g. no retry topic
                for name, address, queue_id in queues:
                    per_broker.setdefault(address, []).append(
                        {"topic": topic, "brokerName": name, "queueId": queue_id}
                    )
            for address, mqs in per_broker.items():
                body = json.dumps(
                    {
                        "consumerGroup": self._group,
                        "clientId": self._client_id,
                        "onlyThisBroker": False,
                        "mqSet": mqs,
                    }
                ).encode()
                reply, _ = admin.call(address, _UNLOCK_BATCH_MQ, body=body, timeout=timeout)
                if reply["code"] != admin.SUCCESS:
                    log.warning("RocketMQ: unlocking queues on %s: %s", address, reply)
        except (OSError, MqkitError, admin.AdminError) as exc:
            log.warning("RocketMQ: unlocking the queues of %s: %s", self._client_id, exc)

    def _on_message(self, _consumer: int, message: int) -> int:
        """Native consume thread: hand the message over and wait for its fate."""
        try:
            if self._closing.is_set():
                return _RECONSUME_LATER
            item = _InFlight(
                self._delivery(message),
                _text(_lib.GetMessageTopic(message)),
                int(_lib.GetMessageQueueId(message)),
                int(_lib.GetMessageQueueOffset(message)),
            )
            item.attempt += self._backend.seen_before(self._key(item))
            with self._waiting_lock:
                self._waiting.add(item)
            try:
                return self._hand_over(item)
            finally:
                with self._waiting_lock:
                    self._waiting.discard(item)
        except Exception:
            log.exception("RocketMQ consume callback failed; the message will be redelivered")
            return _RECONSUME_LATER

    def _hand_over(self, item: _InFlight) -> int:
        while True:
            if self._closing.is_set():  # checked after joining _waiting: close() wakes it
                return _RECONSUME_LATER
            self._queue.put(item)
            item.decided.wait()
            if item.outcome in ("ack", "drop"):  # settled, even if close() came right after
                return _CONSUME_SUCCESS
            if self._closing.is_set():
                return _RECONSUME_LATER
            # Orderly: RocketMQ would hand this consumer the same message again (and keep the
            # rest of its queue back); doing it here keeps the count and honours the delay.
            if self._closing.wait(item.delay):
                return _RECONSUME_LATER
            item.attempt += 1
            item.seen = False
            item.outcome = ""
            item.decided.clear()

    def _delivery(self, message: int) -> Delivery:
        def prop(name: str) -> str | None:
            value = _lib.GetMessageProperty(message, name.encode())
            return None if value is None else value.decode("utf-8", "replace")

        names: list[str] = []
        raw_names = prop(_codec.PROP_HEADER_NAMES)
        if raw_names:
            names = json.loads(raw_names)
        props = {}
        for name in [
            *names,
            _codec.PROP_ID,
            _codec.PROP_TS,
            _codec.PROP_KEY,
            _codec.PROP_HEADERS,
            _codec.PROP_HEADER_NAMES,
            _codec.PROP_EMPTY,
        ]:
            value = prop(name)
            if value:
                props[name] = value
        if _codec.PROP_ID not in props:  # a foreign message: its properties cannot be listed
            props[_codec.PROP_HEADER_NAMES] = "[]"
        topic = _text(_lib.GetMessageTopic(message))
        decoded = _codec.decode(
            _body(message),
            props,
            message_group=None,
            keys=_text(_lib.GetMessageKeys(message)).split(),
            message_id=_text(_lib.GetMessageId(message)),
            born_ms=int(_lib.GetMessageBornTimestamp(message)),
        )
        return Delivery(
            topic=self._names.get(topic, topic),
            body=decoded.body,
            key=decoded.key,
            headers=decoded.headers,
            id=decoded.id,
            timestamp=decoded.timestamp,
            attempt=int(_lib.GetMessageReconsumeTimes(message)) + 1,
            handle=None,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def receive(self, timeout: float | None) -> Delivery | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closing.is_set():
                return None
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if item is None or self._closing.is_set():
                return None
            item.seen = True
            t = item.template
            return Delivery(
                topic=t.topic,
                body=t.body,
                key=t.key,
                headers=t.headers,
                id=t.id,
                timestamp=t.timestamp,
                attempt=item.attempt,
                handle=item,
            )

    def _key(self, item: _InFlight) -> tuple[str, str, int, int]:
        return (self._group, item.topic, item.queue_id, item.offset)

    def _settle(self, delivery: Delivery, outcome: str, delay: float = 0.0) -> None:
        item: _InFlight = delivery.handle
        if outcome != "retry" and not self._closing.is_set():
            self._positions.commit(item.topic, item.queue_id, item.offset + 1)
        item.delay = delay
        item.outcome = outcome
        item.decided.set()

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, "ack")

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        # Without requeue the group drops it: consumed, as far as RocketMQ is concerned.
        self._settle(delivery, "retry" if requeue else "drop", max(0.0, delay))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()  # waiting callbacks answer RECONSUME_LATER: nothing is committed
        with self._waiting_lock:
            waiting = list(self._waiting)
        for item in waiting:
            if item.outcome in ("", "retry"):
                # Delivered again by RocketMQ with reconsume_times unchanged: remember what
                # the application saw, for the next consumer of this backend.
                seen = item.attempt - item.template.attempt + (1 if item.seen else 0)
                if seen:
                    self._backend.remember_seen(self._key(item), seen)
            item.decided.set()
        self._queue.put(None)
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._leave(handle)
            self._unlock_queues()
        self._positions.close()

    def _leave(self, handle: int) -> None:
        """Shut the native consumer down; return once it has left the group.

        librocketmq's shutdown unlocks the queues, writes their positions and unregisters
        from the brokers within milliseconds, but if a rebalance is under way (another member
        just left) it then waits for the queues' outstanding long polls, which a broker holds
        up to 15-20 s. That tail runs in a thread of its own (not a daemon: the interpreter
        waits for it at exit); ``close()`` waits only until the brokers no longer list this
        consumer in its group.
        """
        done = threading.Event()

        def shut_down() -> None:
            try:
                self._destroy(handle)
            finally:
                done.set()

        threading.Thread(target=shut_down, name="mqkit-rocketmq-shutdown").start()
        deadline = time.monotonic() + LEAVE_TIMEOUT
        while not done.wait(0.02):
            if self._client_id is not None and not self._listed():
                return
            if time.monotonic() > deadline:
                log.warning("RocketMQ consumer %s: shutdown still running", self._instance)
                return

    def _listed(self) -> bool:
        """Whether a broker still lists this consumer as a member of its group."""
        timeout = self._backend.connect_timeout
        try:
            for address in self._brokers():
                reply, body = admin.call(
                    address,
                    _GET_CONSUMER_LIST_BY_GROUP,
                    {"consumerGroup": self._group},
                    timeout=timeout,
                )
                members = json.loads(body) if reply["code"] == admin.SUCCESS and body else {}
                if self._client_id in members.get("consumerIdList", []):
                    return True
        except (OSError, ValueError, MqkitError, admin.AdminError) as exc:
            log.debug("RocketMQ: asking for the members of %s: %s", self._group, exc)
            return True
        return False

    def _destroy(self, handle: int) -> None:
        status = _lib.ShutdownPushConsumer(handle)
        if status != _OK:
            log.warning("RocketMQ consumer shutdown: %s", _native_error())
        with _register_lock:
            _lib.UnregisterMessageCallbackOrderly(handle)
            _lib.DestroyPushConsumer(handle)


def open_backend(url: BrokerURL, options: Mapping[str, Any]) -> RemotingBackend:
    return RemotingBackend(url, options)
