"""``rocketmq://`` producer: asynchronous sends through the 5.x client, at most
``max_in_flight`` unconfirmed; the messages of one key are sent one after the other, so their
order holds across retries."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped,unused-ignore]

from mqkit import envelope
from mqkit.adapter import OutgoingMessage, ProducerBase
from mqkit.errors import DeliveryTimeout, MqkitError
from mqkit_rocketmq import wire
from mqkit_rocketmq._grpc import model, producer, start, with_io_loop

if TYPE_CHECKING:
    from mqkit_rocketmq.backend import Backend

log = logging.getLogger("mqkit.rocketmq")


def no_writable_queue(exc: BaseException) -> bool:
    """The proxy (or the client, picking a queue from an empty list) found no queue it may
    write: the topic's broker group has no primary taking writes right now."""
    return isinstance(exc, ZeroDivisionError) or "no writable queue" in str(exc)


class Producer(ProducerBase):
    """Asynchronous sends; messages of one key go one after the other, in order."""

    def __init__(self, backend: Backend, *, max_in_flight: int) -> None:
        super().__init__()
        self._backend = backend
        self._max_in_flight = max_in_flight
        self._client = producer.Producer(backend.config, tls_enable=backend.settings.tls)
        try:
            start(self._client)
        except Exception as exc:
            raise backend.error(exc, "starting a producer") from None
        self._cv = threading.Condition()
        self._pending = 0
        self._errors: list[MqkitError] = []
        self._keyed: dict[str, deque[tuple[Any, str, str]]] = {}
        self._stopped = False  # the client is shut down: no more retries
        self._routed: set[str] = set()  # topics whose route the client has looked up

    def send(self, message: OutgoingMessage) -> None:
        topic = wire.rocketmq_name("topic", message.topic)
        self._backend.check_topic(topic, message.topic)
        rmsg = model.Message()
        wire.to_client(message, topic, rmsg)
        if message.key is None and topic in self._backend.fifo_topics:
            # A topic made for FIFO messages only refuses NORMAL ones: a message group of its
            # own (its id) orders it after nothing, and mqkit-key says it has no key.
            rmsg.message_group = message.id
            rmsg.properties[envelope.KEY] = "null"
        group = rmsg.message_group
        with self._cv:
            while self._pending >= self._max_in_flight:
                self._cv.wait()
            self._pending += 1
            if group is not None:
                queue = self._keyed.get(group)
                if queue is not None:  # a message of this key is on its way: go after it
                    queue.append((rmsg, topic, message.topic))
                    return
                self._keyed[group] = deque()
        self._launch(rmsg, topic, message.topic, raise_now=True)

    def _launch(
        self,
        rmsg: Any,
        topic: str,
        name: str,
        *,
        raise_now: bool = False,
        first: float | None = None,
    ) -> None:
        first = time.monotonic() if first is None else first
        try:
            future: Future[Any]
            if topic in self._routed:
                future = self._client.send_async(rmsg)
            else:  # the first send looks the route up: see with_io_loop
                future = with_io_loop(lambda: self._client.send_async(rmsg))
                self._routed.add(topic)
        except Exception as exc:
            if self._retried(exc, rmsg, topic, name, first):
                return
            error = self._backend.error(exc, f"sending to {name!r}", topic, name)
            self._finished(rmsg, error, record=not raise_now)
            if raise_now:
                raise error from None
            return
        future.add_done_callback(lambda f: self._done(f, rmsg, topic, name, first))

    def _done(self, future: Future[Any], rmsg: Any, topic: str, name: str, first: float) -> None:
        error = None
        exc = future.exception()
        if exc is not None:
            if self._retried(exc, rmsg, topic, name, first):
                return
            error = self._backend.error(exc, f"sending to {name!r}", topic, name)
        self._finished(rmsg, error, record=True)

    def _retried(self, exc: BaseException, rmsg: Any, topic: str, name: str, first: float) -> bool:
        """Send again shortly, keeping this key's later messages waiting, when the failure
        says the send never happened and may succeed soon, for up to ``connect_timeout``:

        - the proxy is restarting or the channel is reconnecting (gRPC UNAVAILABLE);
        - no queue of the topic takes writes: its broker group has no primary (one stopping, or
          a failover under way). The route is looked up again first, since the client's own
          refresh comes only every 30 s and would keep sending to the old primary's queues.
        """
        if self._stopped or time.monotonic() - first >= self._backend.connect_timeout:
            return False
        unavailable = isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
        unwritable = no_writable_queue(exc)
        if not (unavailable or unwritable):
            return False

        def again() -> None:
            if unwritable:
                try:
                    with_io_loop(lambda: self._client.route_manager.update_topic_route(topic))
                except Exception as failed:  # the next attempt reports what is wrong
                    log.debug("RocketMQ: looking up the route of %r again: %s", topic, failed)
            self._launch(rmsg, topic, name, first=first)

        retry = threading.Timer(0.5 if unwritable else 0.25, again)
        retry.daemon = True
        retry.start()
        return True

    def _finished(self, rmsg: Any, error: MqkitError | None, *, record: bool) -> None:
        follow: tuple[Any, str, str] | None = None
        with self._cv:
            self._pending -= 1
            if error is not None and record:
                self._errors.append(error)
            group = rmsg.message_group
            if group is not None and group in self._keyed:
                queue = self._keyed[group]
                if queue:
                    follow = queue.popleft()
                else:
                    del self._keyed[group]
            self._cv.notify_all()
        if follow is not None:
            self._launch(*follow)

    def flush(self, timeout: float | None) -> None:
        with self._cv:
            done = self._cv.wait_for(lambda: self._pending == 0, timeout)
            if self._errors:
                errors, self._errors = self._errors, []
                if len(errors) > 1:
                    raise type(errors[0])(f"{errors[0]} (and {len(errors) - 1} more failed sends)")
                raise errors[0]
            if not done:
                raise DeliveryTimeout(
                    f"{self._pending} message(s) not yet confirmed by the "
                    f"{self._backend.server} after {timeout} s"
                )

    def _close(self) -> None:
        try:
            self.flush(None)
        finally:
            with self._cv:
                self._stopped = True
            try:
                self._client.shutdown()
            except Exception as exc:  # the messages are confirmed; shutting down is best effort
                log.warning("RocketMQ producer shutdown: %s", exc)
