"""One STOMP connection at a time, re-made when it drops.

stomp.py runs a receiver thread per connection and calls listener methods from it; it does not
reconnect once a connection is up, and ``connect(wait=True)`` can wait forever. :class:`Link`
connects with a deadline (turning every failure into :class:`~mqkit.errors.BrokerUnavailable`
naming host and cause), tracks receipts, and, when a live connection is lost, reconnects in a
background thread with backoff until it succeeds or the link is closed, then calls the owner's
``on_up`` so it can subscribe again or resend what was not confirmed.

Each connection has a *generation* number; frames and losses of an old generation are ignored,
and ack ids of an old generation are never sent on a new one (ActiveMQ's are per connection).
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import stomp  # type: ignore[import-untyped]

from mqkit.errors import (
    AuthenticationError,
    BrokerUnavailable,
    ClosedError,
    MqkitError,
    PermissionDenied,
    TLSError,
)
from mqkit.security import tls_failure
from mqkit_activemq.settings import Endpoint

log = logging.getLogger("mqkit.activemq")

#: A CONNECT frame's password as stomp.py logs it (a list of header lines, at DEBUG level).
_PASSCODE = re.compile(r"passcode:(?:(?!\\n['\"]).)*", re.S)


class _HidePasscode(logging.Filter):
    """stomp.py masks ``passcode: x`` but not STOMP 1.2's ``passcode:x`` when it logs a sent
    frame: without this, DEBUG logging would show the password."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "passcode:" in text:
            record.msg, record.args = _PASSCODE.sub("passcode:********", text), ()
        return True


logging.getLogger("stomp.py").addFilter(_HidePasscode())

_ids = itertools.count(1)


class _Listener:
    """stomp.py calls these from its receiver thread (it looks them up by name)."""

    def __init__(self, link: Link, gen: int) -> None:
        self.link = link
        self.gen = gen
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.error: str | None = None

    def on_connected(self, frame: Any) -> None:
        self.connected.set()

    def on_error(self, frame: Any) -> None:
        headers = frame.headers
        text = headers.get("message") or "ERROR frame"
        body = frame.body.decode("utf-8", "replace") if isinstance(frame.body, bytes) else ""
        detail = body.strip().splitlines()[0] if body.strip() else ""
        if detail and detail not in text:
            text = f"{text} ({detail})"
        if not self.connected.is_set():
            self.error = text
            self.ended.set()
            return
        self.link._error(self.gen, headers.get("receipt-id"), text)

    def on_message(self, frame: Any) -> None:
        if self.link.on_message is not None:
            self.link.on_message(self.gen, frame)

    def on_receipt(self, frame: Any) -> None:
        self.link._receipt(self.gen, frame.headers.get("receipt-id", ""))

    def on_heartbeat_timeout(self) -> None:
        log.warning(
            "%s: no heartbeat from %s; dropping the connection",
            self.link.role,
            self.link.endpoint.where(),
        )

    def on_disconnected(self) -> None:
        self.ended.set()
        if self.connected.is_set():
            self.link._lost(self.gen)


class _Wait:
    __slots__ = ("error", "event", "gen")

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.event = threading.Event()
        self.error: str | None = None


def _close_quietly(conn: Any) -> None:
    try:
        conn.transport.running = False
        conn.transport.disconnect_socket()
    except Exception:  # already gone
        pass


#: ActiveMQ's words for a refused login (``SecurityException`` of the authentication plugin).
_LOGIN_REFUSED = re.compile(r"password is invalid|not authenticated|authentication failed", re.I)
#: ... and for an authenticated user the authorization map does not allow something.
_NOT_AUTHORIZED = re.compile(r"is not authorized to|not authorized", re.I)


def refusal(text: str) -> type[MqkitError] | None:
    """The mqkit error class of an ERROR frame's text: a refused login, a refused destination,
    or ``None`` for anything else."""
    if _LOGIN_REFUSED.search(text):
        return AuthenticationError
    if _NOT_AUTHORIZED.search(text):
        return PermissionDenied
    return None


def _probe(endpoint: Endpoint, timeout: float) -> MqkitError:
    """Why connecting fails, for the error message (stomp.py only logs it): a ``TLSError``
    when the handshake fails, else ``BrokerUnavailable`` naming each host's cause."""
    causes = []
    for host, port in endpoint.hosts:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if endpoint.tls_context is not None:
                    try:
                        sock.settimeout(timeout)
                        endpoint.tls_context.wrap_socket(sock, server_hostname=host).close()
                    except (OSError, ssl.SSLError) as exc:
                        tls = tls_failure(exc, f"ActiveMQ at {host}:{port}")
                        if tls is None and isinstance(exc, TimeoutError):
                            tls = TLSError(
                                f"ActiveMQ at {host}:{port}: TLS handshake failed: no answer to "
                                "it (a plaintext port? use stomp:// or the broker's TLS port)"
                            )
                        if tls is not None and len(endpoint.hosts) == 1:
                            return tls
                        causes.append(f"{host}:{port}: TLS handshake failed: {exc}")
                        continue
                causes.append(f"{host}:{port}: TCP connects but no STOMP CONNECTED came back")
        except OSError as exc:
            causes.append(f"{host}:{port}: {exc.strerror or exc}")
    return BrokerUnavailable(f"ActiveMQ at {endpoint.where()} is unreachable: {'; '.join(causes)}")


def _client_refused(endpoint: Endpoint, timeout: float) -> TLSError | None:
    """A ``TLSError`` if the broker refuses our client certificate. In TLS 1.3 the server checks
    it after the client's handshake is done, and its alert reaches stomp.py only as a dead
    socket: repeat the handshake and read the alert."""
    if endpoint.tls_context is None:
        return None
    host, port = endpoint.hosts[0]
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            with endpoint.tls_context.wrap_socket(sock, server_hostname=host) as tls:
                tls.recv(1)
    except (OSError, ssl.SSLError) as exc:
        return tls_failure(exc, f"ActiveMQ at {host}:{port}")
    return None


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def tune_socket(transport: Any) -> None:
    """Low latency for request/response frames (a RECEIPT for each ACK).

    ActiveMQ leaves Nagle's algorithm on by default, so when it answers an ACK with a MESSAGE
    (the freed prefetch slot) and then the RECEIPT, the RECEIPT waits for our TCP ACK of the
    MESSAGE, which Linux delays by up to 40 ms: confirmed acks crawl at ~50/s. Re-arming
    TCP_QUICKACK before every read makes our side ACK at once (~2000 confirmed acks/s), and
    TCP_NODELAY does the same for our own small frames. Elsewhere this is a no-op.
    """
    receive = transport.receive
    tuned: list[Any] = [None]

    def quick_receive() -> Any:
        sock = transport.socket
        if sock is not None:
            try:
                if tuned[0] is not sock:
                    tuned[0] = sock
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if _QUICKACK is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        return receive()

    transport.receive = quick_receive


class _ClosedEarly(BrokerUnavailable):
    """The broker closed the connection before it answered CONNECT, saying nothing."""


def open_connection(
    endpoint: Endpoint, listener_factory: Callable[[Any], _Listener], role: str
) -> tuple[Any, _Listener]:
    """A connected stomp.py connection, or :class:`BrokerUnavailable` within the timeout."""
    deadline = time.monotonic() + endpoint.connect_timeout
    try:
        return _connect(endpoint, listener_factory, deadline)
    except _ClosedEarly as closed:
        if endpoint.username is None:
            raise BrokerUnavailable(str(closed)) from None
    # ActiveMQ answers a failed login with an ERROR frame and closes the socket at once; now and
    # then the close overtakes the frame. Once more, to read the reason.
    try:
        return _connect(endpoint, listener_factory, max(deadline, time.monotonic() + 1.0))
    except _ClosedEarly as closed:
        raise BrokerUnavailable(
            f"{closed}; with user {endpoint.username!r}: a wrong user or password also ends so"
        ) from None


def _connect(
    endpoint: Endpoint, listener_factory: Callable[[Any], _Listener], deadline: float
) -> tuple[Any, _Listener]:
    beat = int(endpoint.heartbeat * 1000)
    conn = stomp.Connection12(
        list(endpoint.hosts),
        prefer_localhost=False,
        try_loopback_connect=False,
        reconnect_attempts_max=1,
        reconnect_sleep_initial=0.0,
        timeout=endpoint.connect_timeout,
        heartbeats=(beat, beat),
        heart_beat_receive_scale=2.0,
        auto_decode=False,
        # wire.encode decides per message: without it ActiveMQ makes a JMS TextMessage.
        auto_content_length=False,
    )
    if endpoint.ssl is not None:
        conn.set_ssl(for_hosts=list(endpoint.hosts), **endpoint.ssl)
    tune_socket(conn.transport)
    listener = listener_factory(conn)
    conn.set_listener("mqkit", listener)
    where = endpoint.where()
    try:
        conn.connect(
            endpoint.username,
            endpoint.password,
            wait=False,
            with_connect_command=True,
            headers={"client-id": endpoint.client_id} if endpoint.client_id else None,
        )
    except stomp.exception.ConnectFailedException:
        _close_quietly(conn)
        raise _probe(endpoint, max(0.5, deadline - time.monotonic())) from None
    except Exception as exc:  # anything else stomp.py raises while connecting
        _close_quietly(conn)
        raise BrokerUnavailable(
            f"ActiveMQ at {where}: connecting failed: {type(exc).__name__}: {exc}"
        ) from None
    remaining = deadline - time.monotonic()
    while remaining > 0 and not listener.connected.is_set() and not listener.ended.is_set():
        listener.connected.wait(min(remaining, 0.05))
        remaining = deadline - time.monotonic()
    if listener.connected.is_set():
        return conn, listener
    ended = listener.ended.is_set()
    _close_quietly(conn)
    if listener.error is not None:
        kind = refusal(listener.error)
        if kind is AuthenticationError:
            raise AuthenticationError(
                f"ActiveMQ at {where} refused the login of user {endpoint.username!r}: "
                f"{listener.error} (check the user name and password)"
            )
        raise BrokerUnavailable(f"ActiveMQ at {where} refused the connection: {listener.error}")
    refused = _client_refused(endpoint, 0.5)
    if refused is not None:
        raise refused
    if ended:
        raise _ClosedEarly(
            f"ActiveMQ at {where} closed the connection before answering CONNECT "
            "(is this a STOMP port, and does it expect TLS?)"
        )
    raise BrokerUnavailable(
        f"ActiveMQ at {where} did not answer the STOMP CONNECT within "
        f"{endpoint.connect_timeout:g} s (connect_timeout)"
    )


class Link:
    """A self-repairing STOMP connection used by one producer or one consumer."""

    def __init__(
        self,
        endpoint: Endpoint,
        role: str,
        *,
        on_message: Callable[[int, Any], None] | None = None,
        on_up: Callable[[Any, int], None] | None = None,
        on_down: Callable[[int], None] | None = None,
        on_error: Callable[[int, str | None, str], None] | None = None,
        on_receipt: Callable[[int, str], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.role = role
        self.on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._on_error = on_error
        self._on_receipt = on_receipt
        self.lock = threading.Condition()
        #: Serializes writes; held while a new connection is published and ``on_up`` runs on it,
        #: so frames written by others never overtake (or repeat) what ``on_up`` sends.
        self.send_lock = threading.RLock()
        self.conn: Any = None
        self._listener: _Listener | None = None
        self.gen = 0
        self.closed = False
        self._waits: dict[str, _Wait] = {}
        self._reconnecting = False
        self._last_down = 0.0
        #: ``start`` succeeded: from then on a lost connection is re-made
        self._started = False

    # -- connecting ---------------------------------------------------------------------------

    def start(self) -> None:
        """The first connection; raises :class:`BrokerUnavailable` (no retries)."""
        self._connect_once()
        with self.lock:
            self._started = True
            gen, missed = self.gen, self.conn is None and not self.closed
        if missed:  # lost right after on_up succeeded, before _started was set
            self._lost(gen)

    def _connect_once(self) -> None:
        gen = next(_ids)
        # Connecting can take up to connect_timeout: do it without the send lock, so senders
        # keep buffering meanwhile. The new connection is published and ``on_up`` runs under
        # the send lock, so a writer either sees no connection (and leaves its frame to
        # ``on_up``) or sees it only after ``on_up`` is done.
        conn, listener = open_connection(self.endpoint, lambda c: _Listener(self, gen), self.role)
        with self.send_lock:
            with self.lock:
                if self.closed:
                    _close_quietly(conn)
                    raise ClosedError(f"{self.role} is closed")
                self.conn = conn
                self._listener = listener
                self.gen = gen
                self.lock.notify_all()
            if self._on_up is not None:
                try:
                    self._on_up(conn, gen)
                except BaseException:
                    self._drop(gen)
                    raise

    def _lost(self, gen: int) -> None:
        with self.lock:
            if gen != self.gen or self.closed:
                return
            self.conn = None
            self._last_down = time.monotonic()
            for rid, wait in list(self._waits.items()):
                if wait.gen == gen:
                    wait.error = "the connection was lost before the broker confirmed it"
                    wait.event.set()
                    del self._waits[rid]
            if not self._started:  # start() gave it up (on_up failed) and raises: no reconnecting
                self.lock.notify_all()
                return
            start = not self._reconnecting
            self._reconnecting = True
            self.lock.notify_all()
        log.warning(
            "%s: connection to ActiveMQ at %s lost; reconnecting", self.role, self.endpoint.where()
        )
        if self._on_down is not None:
            self._on_down(gen)
        if start:
            threading.Thread(
                target=self._reconnect_loop,
                name=f"mqkit-activemq-reconnect-{self.role}",
                daemon=True,
            ).start()

    def _drop(self, gen: int) -> None:
        """Give up a connection that is up but unusable (e.g. ``on_up`` failed)."""
        with self.lock:
            conn = self.conn if gen == self.gen else None
        if conn is not None:
            _close_quietly(conn)

    def _reconnect_loop(self) -> None:
        delay = 0.1
        failures = 0
        while True:
            with self.lock:
                if self.closed:
                    self._reconnecting = False
                    return
            try:
                self._connect_once()
            except ClosedError:
                with self.lock:
                    self._reconnecting = False
                return
            except Exception as exc:  # BrokerUnavailable, or on_up failing mid-way
                failures += 1
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "%s: reconnecting to %s failed (%s); retrying every %.1f s at most",
                    self.role,
                    self.endpoint.where(),
                    exc,
                    self.endpoint.reconnect_max_delay,
                )
                with self.lock:
                    self.lock.wait_for(lambda: self.closed, delay)
                delay = min(delay * 2, self.endpoint.reconnect_max_delay)
                continue
            with self.lock:
                self._reconnecting = False
                up = self.conn is not None
            if up:
                log.warning(
                    "%s: reconnected to ActiveMQ at %s after %d failed attempt(s)",
                    self.role,
                    self.endpoint.where(),
                    failures,
                )
                return
            # Lost again while on_up ran; _lost saw _reconnecting=True and left it to us.
            with self.lock:
                self._reconnecting = True

    # -- frames -----------------------------------------------------------------------------

    def current(self) -> tuple[Any, int]:
        """The live connection and its generation, or ``(None, gen)`` while reconnecting."""
        with self.lock:
            return self.conn, self.gen

    def wait_up(self, deadline: float | None) -> tuple[Any, int]:
        with self.lock:
            while self.conn is None and not self.closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.lock.wait(remaining)
            return self.conn, self.gen

    def expect(self, gen: int) -> str:
        """A fresh receipt id whose RECEIPT (or ERROR, or loss of ``gen``) ``wait`` can await."""
        rid = f"r{next(_ids)}"
        with self.lock:
            self._waits[rid] = _Wait(gen)
        return rid

    def wait(self, rid: str, timeout: float) -> str | None:
        """``None`` once receipt ``rid`` came, else why not (error, loss or timeout)."""
        with self.lock:
            wait = self._waits.get(rid)
        if wait is None:
            return None
        if not wait.event.wait(timeout):
            with self.lock:
                self._waits.pop(rid, None)
            return f"no receipt from the broker within {timeout:g} s"
        return wait.error

    def forget(self, rid: str) -> None:
        with self.lock:
            self._waits.pop(rid, None)

    def _receipt(self, gen: int, rid: str) -> None:
        with self.lock:
            wait = self._waits.pop(rid, None)
        if wait is not None:
            wait.event.set()
        elif self._on_receipt is not None:
            self._on_receipt(gen, rid)

    def _error(self, gen: int, rid: str | None, text: str) -> None:
        if rid is not None:
            with self.lock:
                wait = self._waits.pop(rid, None)
            if wait is not None:
                wait.error = f"the broker answered ERROR: {text}"
                wait.event.set()
                return
        log.warning("%s: ActiveMQ at %s sent ERROR: %s", self.role, self.endpoint.where(), text)
        if self._on_error is not None:
            self._on_error(gen, rid, text)

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """DISCONNECT (waiting up to ``timeout`` for its receipt), then drop the socket."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            conn, listener = self.conn, self._listener
            self.conn = None
            for wait in self._waits.values():
                wait.error = f"the {self.role} was closed"
                wait.event.set()
            self._waits.clear()
            self.lock.notify_all()
        if conn is None:
            return
        try:
            with self.send_lock:
                stomp.protocol.Protocol12.disconnect(conn, receipt=f"bye{next(_ids)}")
            if listener is not None:
                listener.ended.wait(timeout)
        except Exception as exc:  # the connection may already be broken
            log.debug("%s: DISCONNECT failed: %s", self.role, exc)
        finally:
            _close_quietly(conn)
