"""Connecting with pika, and pika's failures told as one line (mqkit errors name host and cause):
TLS problems as ``TLSError``, refused logins as ``AuthenticationError``, a vhost or resource the
user may not use as ``PermissionDenied``."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions
from pika.adapters.utils.io_services_utils import (  # type: ignore[attr-defined]
    _AsyncPlaintextTransport,
)

from mqkit.errors import (
    AuthenticationError,
    BrokerUnavailable,
    MqkitError,
    PermissionDenied,
    TLSError,
)
from mqkit.security import tls_failure

from .settings import Endpoint

#: An ``ssl`` error pika kept only as text (it wraps a stream lost during the protocol
#: handshake in ``IncompatibleProtocolError``), e.g. the broker's alert refusing a client cert.
_SSL_TEXT = re.compile(r"\[SSL: ([A-Z0-9_]+)\] ([^'\"(]*)")


def _tls(item: BaseException) -> str | None:
    """What went wrong with TLS in ``item`` (an ssl exception, or one pika turned to text)."""
    found = tls_failure(item, "")
    if found is None:
        text = _SSL_TEXT.search(str(item))
        if text is None:
            return None
        rebuilt = ssl.SSLError(1, f"[SSL: {text.group(1)}] {text.group(2).strip()}")
        rebuilt.reason = text.group(1)
        found = tls_failure(rebuilt, "")
        assert found is not None
    return str(found).removeprefix(": ")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything pika wrapped inside it (args, ``.exception``, causes)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        item = todo.pop(0)
        if any(item is s for s in seen):
            continue
        seen.append(item)
        inner = getattr(item, "exception", None)
        if isinstance(inner, BaseException):
            todo.append(inner)
        todo.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
        for linked in (item.__cause__, item.__context__):
            if linked is not None:
                todo.append(linked)
    return seen


#: AMQP's reply code for a refused access (a vhost, exchange or queue the user may not use).
ACCESS_REFUSED = 403


def describe(exc: BaseException) -> str:
    """A one-line cause for an exception pika raised while connecting or talking."""
    causes = _causes(exc)
    for item in causes:
        tls = _tls(item)
        if tls is not None:
            return tls
    for item in causes:
        if isinstance(item, pika.exceptions.ProbableAuthenticationError):
            return "login refused: check the user name and password (ACCESS_REFUSED)"
        if isinstance(item, pika.exceptions.ProbableAccessDeniedError):
            if _missing_vhost(item):
                return "the virtual host does not exist (RabbitMQ: NOT_ALLOWED, vhost not found)"
            return (
                "access to the virtual host refused: the user has no permission on it "
                "(RabbitMQ: NOT_ALLOWED)"
            )
        if isinstance(item, pika.exceptions.IncompatibleProtocolError):
            return (
                "the server did not answer as an AMQP 0-9-1 broker (if that is the broker's "
                "TLS port, use amqps:// or tls=true)"
            )
        if isinstance(item, pika.exceptions.ConnectionClosedByBroker):
            return f"the broker closed the connection ({item.reply_code} {item.reply_text})"
        if isinstance(item, socket.gaierror):
            return f"the host name does not resolve ({item.strerror})"
        if isinstance(item, ConnectionRefusedError):
            return "connection refused (is the broker running and listening on that port?)"
        if isinstance(item, (TimeoutError, socket.timeout)) or "Timeout" in type(item).__name__:
            return "no answer from the broker within the connect timeout"
        if isinstance(item, OSError):
            return f"{type(item).__name__}: {item}"
    for item in causes:
        if isinstance(item, pika.exceptions.StreamLostError):
            return f"connection lost ({item})"
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _missing_vhost(exc: BaseException) -> bool:
    """RabbitMQ's NOT_ALLOWED says "vhost … not found" for a missing vhost, "access to vhost …
    refused for user …" for one the user may not use."""
    return "not found" in str(exc)


def kind(exc: BaseException) -> type[MqkitError]:
    """The mqkit error class of a failure to connect: a TLS problem, a refused login, a vhost
    the user may not use, or else an unavailable broker."""
    causes = _causes(exc)
    if any(_tls(item) is not None for item in causes):
        return TLSError
    for item in causes:
        if isinstance(item, pika.exceptions.ProbableAuthenticationError):
            return AuthenticationError
        if isinstance(item, pika.exceptions.ProbableAccessDeniedError):
            return BrokerUnavailable if _missing_vhost(item) else PermissionDenied
        if (
            isinstance(item, pika.exceptions.ConnectionClosedByBroker)
            and item.reply_code == ACCESS_REFUSED
        ):
            # ACCESS_REFUSED while logging in: a refused login (the user or password)
            return AuthenticationError
    return BrokerUnavailable


def unavailable(endpoint: Endpoint, index: int, exc: BaseException) -> MqkitError:
    """The mqkit error for a failure to connect to host ``index`` (``BrokerUnavailable`` or
    one of ``TLSError``, ``AuthenticationError``, ``PermissionDenied``), naming the host and the
    cause, chained to ``exc``."""
    err_type = kind(exc)
    where = endpoint.where(index)
    if err_type is BrokerUnavailable and any(
        isinstance(item, pika.exceptions.IncompatibleProtocolError) for item in _causes(exc)
    ):
        refused = _client_refused(endpoint, index)
        if refused is not None:
            tls = TLSError(f"{where} is unavailable: {refused}")
            tls.__cause__ = exc
            return tls
    if err_type is PermissionDenied:
        err: MqkitError = PermissionDenied(f"{where} refused access: {describe(exc)}")
    else:
        err = err_type(f"{where} is unavailable: {describe(exc)}")
    err.__cause__ = exc
    return err


def _client_refused(endpoint: Endpoint, index: int) -> str | None:
    """Why the broker refused our TLS client, if it did. In TLS 1.3 the broker checks a client
    certificate after the client's handshake is done; pika then sends the protocol header at
    once, and the broker's alert is often lost to the reset that follows (the stream is lost,
    nothing says why). A handshake that sends nothing reads the alert."""
    if endpoint.tls is None:
        return None
    host, port = endpoint.hosts[index % len(endpoint.hosts)]
    timeout = min(endpoint.connect_timeout, 1.0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            with endpoint.tls.wrap_socket(sock, server_hostname=host) as tls:
                tls.recv(1)
    except (OSError, ssl.SSLError) as exc:
        return _tls(exc)
    return None


def refused(where: str, what: str, exc: pika.exceptions.ChannelClosedByBroker) -> PermissionDenied:
    """``PermissionDenied`` for a channel the broker closed with ACCESS_REFUSED (403) while
    declaring, publishing or consuming ``what``."""
    err = PermissionDenied(
        f"{where} refused {what}: {exc.reply_code} {exc.reply_text} (the user lacks the "
        "configure, write or read permission on it in this vhost)"
    )
    err.__cause__ = exc
    return err


#: A corked write goes out once this many bytes are waiting (bounds the copy it makes).
CORK_BYTES = 256 * 1024


class CoalescingConnection(pika.SelectConnection):
    """pika's ``SelectConnection``, writing a message's frames (method, header, body) to the
    socket together, and between :meth:`corked`'s start and end, every frame together.

    pika hands its transport one buffer per frame, and the transport sends each buffer with
    its own ``send()``: with ``TCP_NODELAY``, three packets per published message and one per
    ack, each a system call for the client and a read for the broker. And it sends only once
    a poll says the socket is writable: two epoll changes and a poll per write. A corked batch
    goes straight to a plain socket when nothing is queued before it; what the socket does not
    take goes through pika's buffer as before. The frames and their order are pika's own; only
    the writes are joined."""

    _cork: list[bytes] | None = None
    _cork_bytes = 0

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        size = sum(len(f) for f in marshaled_frames)
        self.bytes_sent += size
        self.frames_sent += len(marshaled_frames)
        if self._cork is None:
            self._adapter_emit_data(b"".join(marshaled_frames))  # type: ignore[attr-defined]
            return
        self._cork.extend(marshaled_frames)
        self._cork_bytes += size
        if self._cork_bytes >= CORK_BYTES:
            self._uncork()

    @contextmanager
    def corked(self) -> Iterator[None]:
        """Frames output inside go to the socket in one write at the end (or every
        ``CORK_BYTES``). Only for the thread that drives the connection; not nested."""
        assert self._cork is None, "corked() is already active on this connection"
        self._cork, self._cork_bytes = [], 0
        try:
            yield
        finally:
            self._uncork()
            self._cork = None

    def output_pending(self) -> int:
        """Bytes waiting in pika's buffer for the socket."""
        transport = self._open_transport()
        return 0 if transport is None else int(transport.get_write_buffer_size())

    def _open_transport(self) -> Any:
        """pika's transport of the open connection (None before it is open or once closed)."""
        return getattr(self, "_transport", None)

    def _uncork(self) -> None:
        if self._cork:
            data = b"".join(self._cork)
            self._cork.clear()
            self._cork_bytes = 0
            sent = self._send_now(data)
            if sent < len(data):
                self._adapter_emit_data(data[sent:])  # type: ignore[attr-defined]

    def _send_now(self, data: bytes) -> int:
        """How much of ``data`` a plain socket took at once; 0 when the data must queue
        behind pika's buffer (it holds something, or TLS, or the connection is not open)."""
        transport = self._open_transport()
        if (
            not self.is_open
            or not isinstance(transport, _AsyncPlaintextTransport)
            or transport.get_write_buffer_size()
        ):
            return 0
        try:
            return int(transport._sock.send(data))
        except OSError:  # full (EAGAIN), or broken: pika's own write path handles both
            return 0


def open_blocking(endpoint: Endpoint, start: int = 0) -> tuple[pika.BlockingConnection, int]:
    """Connect to the first host that answers, from host ``start`` on; the connection and
    its host's index. ``BrokerUnavailable`` names the last failure."""
    last: BaseException | None = None
    index = start
    for attempt in range(len(endpoint.hosts)):
        index = start + attempt
        try:
            conn = pika.BlockingConnection(
                endpoint.parameters(index),
                # pika's hook for the class under its blocking API (tested by its own suite)
                _impl_class=CoalescingConnection,  # type: ignore[arg-type]
            )
            return conn, index
        except Exception as exc:  # pika raises non-AMQPError types too (stack timeouts)
            last = exc
    assert last is not None
    raise unavailable(endpoint, index, last)
