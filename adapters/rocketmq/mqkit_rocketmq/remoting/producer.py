"""``rocketmq+remoting://`` producer: each ``send`` is synchronous (confirmed by the broker, so
``flush`` has nothing to wait for); a keyed message goes to the queue its key hashes to, so a
key stays on one queue."""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from mqkit.adapter import OutgoingMessage, ProducerBase
from mqkit.errors import BrokerUnavailable, MqkitError
from mqkit_rocketmq import wire as layout
from mqkit_rocketmq.remoting import wire
from mqkit_rocketmq.remoting._native import (
    OK,
    SendResult,
    check,
    claim,
    instance_name,
    key_hash,
    lib,
    native_error,
    select_queue,
    track,
)

if TYPE_CHECKING:
    from mqkit_rocketmq.remoting.backend import Backend

log = logging.getLogger("mqkit.rocketmq.remoting")

#: A broker's default ``maxMessageSize``; librocketmq 1.0.1 refuses bodies over 128 KiB unless
#: told.
MAX_MESSAGE_SIZE = 4 << 20
#: The largest body the broker takes whatever it holds: librocketmq sends bodies over 4 KiB
#: zlib-compressed, which makes an incompressible body a little larger, and the broker counts
#: the properties too (a random body of ``MAX_MESSAGE_SIZE`` - 1 KiB is refused).
MAX_BODY_SIZE = MAX_MESSAGE_SIZE - (8 << 10)


class Producer(ProducerBase):
    """One native producer (started at the first send) with a client instance of its own."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend
        self._handle: int | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mqkit-rocketmq-send")

    def _producer(self) -> int:
        with self._lock:
            if self._handle is not None:
                return self._handle
            backend = self._backend
            settings = backend.settings
            handle: int = lib.CreateProducer(settings.producer_group.encode())
            if not handle:
                raise BrokerUnavailable("librocketmq could not create a producer")
            track(handle, functools.partial(_destroy, handle))
            try:
                check(
                    lib.SetProducerNameServerAddress(handle, backend.namesrv.encode()),
                    "name server",
                )
                check(
                    lib.SetProducerInstanceName(handle, instance_name("producer").encode()),
                    "instance name",
                )
                check(
                    lib.SetProducerSendMsgTimeout(handle, int(settings.send_timeout * 1000)),
                    "timeout",
                )
                check(lib.SetProducerMaxMessageSize(handle, MAX_MESSAGE_SIZE), "max message size")
                if backend.credentials:
                    access, secret = backend.credentials
                    check(
                        lib.SetProducerSessionCredentials(
                            handle,
                            access.encode(),
                            (secret or "").encode(),
                            settings.channel.encode(),
                        ),
                        "credentials",
                    )
                check(lib.StartProducer(handle), "starting the producer")
            except Exception as exc:
                if claim(handle):
                    lib.DestroyProducer(handle)
                raise backend.error(exc, "starting a producer") from None
            self._handle = handle
            return handle

    def send(self, message: OutgoingMessage) -> None:
        topic = layout.rocketmq_name("topic", message.topic)
        encoded = wire.encode(message)
        self._backend.ensure_topic(topic)
        selector_arg = None if message.key is None else ctypes.c_int(key_hash(message.key))

        def send() -> None:
            producer = self._producer()
            native = wire.to_native(topic, encoded)
            try:
                result = SendResult()
                if selector_arg is None:
                    status = lib.SendMessageSync(producer, native, ctypes.byref(result))
                else:
                    status = lib.SendMessageOrderly(
                        producer, native, select_queue, ctypes.addressof(selector_arg), 3,
                        ctypes.byref(result),
                    )
                check(status, "send")
            finally:
                lib.DestroyMessage(native)

        # The native send can block for a minute when the cluster does not answer: bound it.
        future = self._executor.submit(send)
        limit = self._backend.settings.send_timeout + self._backend.settings.connect_timeout
        try:
            future.result(timeout=limit)
        except MqkitError:
            raise
        except FutureTimeout:
            raise BrokerUnavailable(
                f"sending to {message.topic!r} via the {self._backend.server}: no answer within "
                f"{limit:g} s (the send may still complete)"
            ) from None
        except Exception as exc:
            raise self._backend.error(exc, f"sending to {message.topic!r}") from None

    def flush(self, timeout: float | None) -> None:
        """Every send was synchronous: nothing is left to confirm."""

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._handle is not None:
            _destroy(self._handle)
            self._handle = None


def _destroy(handle: int) -> None:
    """Shut a native producer down and destroy it, unless that was done (``_native.claim``)."""
    if not claim(handle):
        return
    status = lib.ShutdownProducer(handle)
    if status != OK:
        log.warning("RocketMQ producer shutdown: %s", native_error())
    lib.DestroyProducer(handle)
