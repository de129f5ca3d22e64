"""The producer: persistent SENDs with receipts, pipelined, resent after a reconnect."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from mqkit.adapter import OutgoingMessage, ProducerBase
from mqkit.errors import ClosedError, DeliveryTimeout, MqkitError, PermissionDenied
from mqkit_activemq import wire
from mqkit_activemq.link import Link, refusal
from mqkit_activemq.settings import Endpoint

log = logging.getLogger("mqkit.activemq")


class Producer(ProducerBase):
    """Pipelines persistent SENDs, each with a receipt; keeps every unconfirmed message so it can
    be sent again on a new connection after a drop (at-least-once)."""

    def __init__(self, endpoint: Endpoint, *, max_in_flight: int, send_timeout: float) -> None:
        super().__init__()
        self._max_in_flight = max_in_flight
        self._send_timeout = send_timeout
        self._cv = threading.Condition()
        self._seq = 0
        #: receipt id -> (seq, destination, headers, body), in sending order.
        self._pending: OrderedDict[str, tuple[int, str, dict[str, str], bytes]] = OrderedDict()
        self._error: MqkitError | None = None
        self._link = Link(
            endpoint,
            "producer",
            on_up=self._resend,
            on_receipt=self._confirmed,
            on_error=self._failed,
        )
        try:
            self._link.start()
        except BaseException:
            self._link.close()
            raise

    def send(self, message: OutgoingMessage) -> None:
        destination = wire.topic_destination(message.topic)
        headers = wire.encode(message)
        deadline = time.monotonic() + self._send_timeout
        while True:
            self._wait_for_room(deadline)
            # Registering the message and writing it happen under the send lock, which a new
            # connection holds while _resend sends the backlog: so a message is written either
            # by _resend or here, never by both (a copy of it would be stored twice), and the
            # wire order is the order of registration.
            with self._link.send_lock:
                with self._cv:
                    if self._closed:  # close() began on another thread meanwhile
                        raise ClosedError("producer is closed")
                    self._raise_error()
                    if len(self._pending) >= self._max_in_flight:
                        continue  # another sender took the room meanwhile
                    self._seq += 1
                    rid = f"s{id(self):x}-{self._seq}"
                    self._pending[rid] = (self._seq, destination, headers, message.body)
                conn, _ = self._link.current()
                if conn is None:
                    return  # reconnecting: _resend sends it once the new connection is up
                try:
                    conn.send(destination, message.body, headers=dict(headers, receipt=rid))
                except Exception as exc:  # the connection broke under us; the resend covers it
                    log.debug("send failed, will resend after reconnecting: %s", exc)
                return

    def _wait_for_room(self, deadline: float) -> None:
        """Block (without the send lock, which the resend needs) while max_in_flight are
        unconfirmed."""
        with self._cv:
            self._raise_error()
            if len(self._pending) < self._max_in_flight:
                return
            if not self._cv.wait_for(
                lambda: len(self._pending) < self._max_in_flight or self._error is not None,
                max(0.0, deadline - time.monotonic()),
            ):
                raise DeliveryTimeout(
                    f"{len(self._pending)} messages to ActiveMQ at "
                    f"{self._link.endpoint.where()} are still unconfirmed after "
                    f"{self._send_timeout:g} s (send_timeout); is the broker up?"
                )
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _resend(self, conn: Any, gen: int) -> None:
        """On a new connection (send lock held, so no send() writes meanwhile): send what was
        never confirmed, in order."""
        with self._cv:
            backlog = list(self._pending.items())
        if backlog:
            log.warning("producer: resending %d unconfirmed message(s)", len(backlog))
        for rid, (_, destination, headers, body) in backlog:
            conn.send(destination, body, headers=dict(headers, receipt=rid))

    def _confirmed(self, gen: int, rid: str) -> None:
        with self._cv:
            if self._pending.pop(rid, None) is not None:
                self._cv.notify_all()

    def _failed(self, gen: int, rid: str | None, text: str) -> None:
        with self._cv:
            if rid is not None and (sent := self._pending.pop(rid, None)) is not None:
                if refusal(text) is PermissionDenied:
                    self._error = PermissionDenied(
                        f"ActiveMQ at {self._link.endpoint.where()} refused a message to "
                        f"{sent[1]}: {text} (the broker's authorization map does not let this "
                        "user write to it)"
                    )
                else:
                    self._error = MqkitError(
                        f"ActiveMQ at {self._link.endpoint.where()} rejected a message: {text}"
                    )
                self._cv.notify_all()

    def flush(self, timeout: float | None) -> None:
        with self._cv:
            target = self._seq

            def done() -> bool:
                if self._error is not None:
                    return True
                first = next(iter(self._pending.values()), None)
                return first is None or first[0] > target

            finished = self._cv.wait_for(done, timeout)
            self._raise_error()
            if not finished:
                left = sum(1 for v in self._pending.values() if v[0] <= target)
                raise DeliveryTimeout(
                    f"{left} message(s) not yet confirmed by ActiveMQ at "
                    f"{self._link.endpoint.where()} after {timeout} s"
                )

    def _close(self) -> None:
        """Wait for what was sent (up to ``send_timeout``), then DISCONNECT."""
        try:
            self.flush(self._send_timeout)
        finally:
            self._link.close()
