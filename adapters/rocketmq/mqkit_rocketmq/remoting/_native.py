"""The native ``librocketmq`` (rocketmq-client-cpp) through ctypes, for ``rocketmq+remoting://``.

Either Python binding may be installed (see :mod:`mqkit_rocketmq._drivers`): the third-party
``rocketmq`` 0.4.4 wheel, which bundles a librocketmq 1.0.1, or Apache's
``rocketmq-client-python`` 2.0.0 with a librocketmq 2.x on the machine. The adapter uses
neither binding's classes (the 0.4.4 consumer turns a callback that raises into a success, and
neither sends a body with zero bytes): it loads the library the binding found and declares the
C API both library versions have.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import importlib
import itertools
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from mqkit_rocketmq._drivers import load_remoting

log = logging.getLogger("mqkit.rocketmq.remoting")

_binding, FLAVOUR = load_remoting()

OK = 0
CONSUME_SUCCESS = 0
RECONSUME_LATER = 1
CLUSTERING = 1  # CMessageModel: BROADCASTING = 0, CLUSTERING = 1


class SendResult(ctypes.Structure):
    _fields_ = [
        ("sendStatus", ctypes.c_int),
        ("msgId", ctypes.c_char * 256),
        ("offset", ctypes.c_longlong),
    ]


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
SELECTOR = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _load_library() -> ctypes.CDLL:
    """The librocketmq the installed binding loaded, with our own function declarations."""
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
        "GetMessageTags": ([p], s),
        "GetMessageStoreTimestamp": ([p], ll),
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
        "SendMessageSync": ([p, p, ctypes.POINTER(SendResult)], i),
        "SendMessageOrderly": ([p, p, SELECTOR, p, i, ctypes.POINTER(SendResult)], i),
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
        "RegisterMessageCallbackOrderly": ([p, CALLBACK], i),
        "UnregisterMessageCallbackOrderly": ([p], i),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = result
    return lib


lib = _load_library()
#: librocketmq keeps the push consumers' callbacks in one global map without a lock.
register_lock = threading.Lock()
_instances = itertools.count(1)
_WHERE = re.compile(r",error:-?\d+,in file <[^>]*> line:\d+")


def instance_name(kind: str) -> str:
    """A client instance of its own for every producer and consumer: librocketmq refuses a
    second producer or consumer of one group in one client instance, and the broker tells the
    members of a group apart by client id (``ip@instance``)."""
    return f"mqkit-{kind}-{os.getpid()}-{next(_instances)}"


def native_error() -> str:
    raw = lib.GetLatestErrorMessage()
    message = raw.decode("utf-8", "replace") if raw else "no error message"
    # "…,error:-1,in file </tmp/rocketmq-client-cpp/src/…> line:379": where it was raised
    return _WHERE.sub("", message.removeprefix("msg: ")).strip()


class NativeError(Exception):
    pass


def check(status: int, doing: str) -> None:
    if status != OK:
        raise NativeError(f"{doing}: {native_error()} (status {status})")


def text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def body(message: int) -> bytes:
    """The body of a received message, zero bytes included.

    The C API returns only ``getBody().c_str()``. The bundled librocketmq 1.0.1 is built with
    the pre-C++11 libstdc++ ABI, whose ``std::string`` keeps its length 24 bytes before the
    characters (``_Rep``: length, capacity, reference count); the length is taken from there
    and checked against the capacity and the terminating zero. Any other library gives the
    characters up to the first zero byte.
    """
    pointer = lib.GetMessageBody(message)
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


def key_hash(key: str) -> int:
    """A stable non-negative 31-bit int: the queue of a key is this modulo the queue count."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _queue_of(queues: int, _message: int, arg: int) -> int:
    """librocketmq's queue selector: ``arg`` points to the key's hash."""
    return int(ctypes.cast(arg, ctypes.POINTER(ctypes.c_int))[0]) % queues


select_queue = SELECTOR(_queue_of)


#: ``(host, port)`` of the name servers and brokers the backends of this process talk to.
ENDPOINTS: set[tuple[str, int]] = set()


#: What shuts down and destroys each native client (producer or push consumer) that exists, by
#: handle; called at exit for the clients the application never closed. Whoever takes a handle
#: out (:func:`claim`) destroys it: a close, or the exit.
_live: dict[int, Callable[[], None]] = {}


def track(handle: int, shut_down: Callable[[], None]) -> None:
    """Register a native client just created, with what shuts it down at exit."""
    _live[handle] = shut_down


def claim(handle: int) -> bool:
    """Whether the caller is the one to destroy ``handle``: true once per handle."""
    return _live.pop(handle, None) is not None


def _at_exit() -> None:
    """Shut down the native clients the application left running, then their connections.

    A client left running (a consumer dropped without ``close()`` keeps running natively, see
    ``consumer._callbacks``) keeps librocketmq's event loop busy, and ``exit()`` then waits for
    that loop for ever (below). By now the threads of the closes the application made have
    ended (the interpreter joined them), so what is left was never closed.
    """
    for shut_down in list(_live.values()):
        try:
            shut_down()
        except Exception as exc:
            log.warning("RocketMQ: shutting down a client at exit: %s", exc)
    _release_connections()


def _release_connections() -> None:
    """At exit: shut down the connections librocketmq still holds to the cluster.

    librocketmq 1.0.1 keeps a connection to a name server and one to a broker after every
    client shut down, and its static ``EventLoop`` destructor (run by ``exit()``, after Python
    is gone) stops its libevent loop only once the loop has no event left: the loop's thread
    sleeps in ``epoll_wait`` on those connections and the process never ends. Shut down, they
    are events the loop handles and drops, and the process exits. Only sockets whose peer is a
    known name server or broker are touched; by now every native client was shut down.
    """
    if not ENDPOINTS:
        return
    try:
        wanted = {(socket.gethostbyname(host), port) for host, port in ENDPOINTS}
        names = os.listdir("/proc/self/fd")  # Linux; elsewhere nothing is done
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=int(name))
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername()[:2] in wanted:
                    sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.detach()


atexit.register(_at_exit)
