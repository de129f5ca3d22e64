"""Connecting with pika, and pika's failures told as one line (mqkit errors name host and cause)."""

from __future__ import annotations

import socket
import ssl

import pika
import pika.exceptions

from mqkit.errors import BrokerUnavailable

from .settings import Endpoint


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


def describe(exc: BaseException) -> str:
    """A one-line cause for an exception pika raised while connecting or talking."""
    causes = _causes(exc)
    for item in causes:
        if isinstance(item, pika.exceptions.ProbableAuthenticationError):
            return "login refused: check the user name and password (ACCESS_REFUSED)"
        if isinstance(item, pika.exceptions.ProbableAccessDeniedError):
            return (
                "access to the virtual host refused: it does not exist or the user has no "
                "permission on it"
            )
        if isinstance(item, pika.exceptions.IncompatibleProtocolError):
            return "the server did not answer as an AMQP 0-9-1 broker"
        if isinstance(item, pika.exceptions.ConnectionClosedByBroker):
            return f"the broker closed the connection ({item.reply_code} {item.reply_text})"
        if isinstance(item, socket.gaierror):
            return f"the host name does not resolve ({item.strerror})"
        if isinstance(item, ConnectionRefusedError):
            return "connection refused (is the broker running and listening on that port?)"
        if isinstance(item, (TimeoutError, socket.timeout)) or "Timeout" in type(item).__name__:
            return "no answer from the broker within the connect timeout"
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed ({item})"
        if isinstance(item, OSError):
            return f"{type(item).__name__}: {item}"
    for item in causes:
        if isinstance(item, pika.exceptions.StreamLostError):
            return f"connection lost ({item})"
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def unavailable(endpoint: Endpoint, index: int, exc: BaseException) -> BrokerUnavailable:
    """``BrokerUnavailable`` naming host ``index`` and the cause, chained to ``exc``."""
    err = BrokerUnavailable(f"{endpoint.where(index)} is unavailable: {describe(exc)}")
    err.__cause__ = exc
    return err


def open_blocking(endpoint: Endpoint, start: int = 0) -> tuple[pika.BlockingConnection, int]:
    """Connect to the first host that answers, from host ``start`` on; the connection and
    its host's index. ``BrokerUnavailable`` names the last failure."""
    last: BaseException | None = None
    index = start
    for attempt in range(len(endpoint.hosts)):
        index = start + attempt
        try:
            return pika.BlockingConnection(endpoint.parameters(index)), index
        except Exception as exc:  # pika raises non-AMQPError types too (stack timeouts)
            last = exc
    assert last is not None
    raise unavailable(endpoint, index, last)
