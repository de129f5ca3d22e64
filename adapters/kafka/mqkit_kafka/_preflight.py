"""One connection that checks TLS and the SASL login before kafka-python takes over.

kafka-python treats a refused certificate, a TLS handshake with a plaintext port and a wrong
password alike: it closes the connection and retries until the bootstrap timeout, then reports
that it could not bootstrap. This check talks to the first reachable bootstrap broker once,
with the same TLS context and credentials, and turns a definite refusal into a
:class:`~mqkit.errors.TLSError` or :class:`~mqkit.errors.AuthenticationError` that says what is
wrong, in well under a second; a plaintext client gets a TLSError when the port speaks TLS
(one ApiVersions request otherwise). Anything else (nothing listening, a broker still starting) is
left to kafka-python and its timeouts.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Sequence
from typing import Any

from kafka.net.sasl import get_sasl_mechanism  # type: ignore[import-untyped]

from mqkit.errors import AuthenticationError, BrokerUnavailable, TLSError
from mqkit.security import tls_failure

_API_VERSIONS = 18
_SASL_HANDSHAKE = 17
_SASL_AUTHENTICATE = 36
_UNSUPPORTED_SASL_MECHANISM = 33
_ILLEGAL_SASL_STATE = 34


class _Closed(Exception):
    """The broker closed the connection before it answered."""


def preflight(
    hosts: Sequence[tuple[str, int]], config: dict[str, Any], where: str, timeout: float
) -> None:
    """Raise TLSError, AuthenticationError or BrokerUnavailable when the first bootstrap broker
    that accepts a TCP connection refuses our TLS or credentials; return otherwise."""
    for host, port in hosts:
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError:
            continue  # unreachable: kafka-python says so after its own timeout
        with raw:
            _check(raw, host, port, config, f"{where} ({host}:{port})", timeout)
        return


def _check(
    raw: socket.socket, host: str, port: int, config: dict[str, Any], where: str, timeout: float
) -> None:
    raw.settimeout(timeout)
    sock: socket.socket = raw
    context: ssl.SSLContext | None = config.get("ssl_context")
    step = "TLS handshake"
    try:
        if context is not None:
            sock = context.wrap_socket(raw, server_hostname=host.rstrip("."))
        if config.get("sasl_mechanism"):
            step = "SASL login"
            _sasl_login(sock, config, where)
        else:
            # TLS 1.3: a broker that wants a client certificate refuses it after the handshake,
            # on the first read.
            step = "first request"
            _request(sock, _API_VERSIONS, 0, b"")
    except (AuthenticationError, TLSError):
        raise
    except TimeoutError:
        if context is None and not config.get("sasl_mechanism"):
            return  # a plaintext broker that is slow to answer: kafka-python waits longer
        raise BrokerUnavailable(f"{where}: no answer within {timeout:g} s ({step})") from None
    except (OSError, _Closed) as exc:
        failure = tls_failure(exc, where)
        if failure is not None and not isinstance(exc, ssl.SSLEOFError):
            raise failure from None
        if context is not None and step == "TLS handshake":
            raise TLSError(
                f"{where}: TLS handshake failed: the broker closed the connection (a plaintext "
                "port? use the broker's TLS port, or leave tls out)"
            ) from None
        if context is None and _speaks_tls(host, port, timeout):
            raise TLSError(
                f"{where}: the port speaks TLS: add tls=true (and ca_file= for a private CA)"
            ) from None
        if step == "SASL login":
            raise AuthenticationError(
                f"{where}: the broker closed the connection during the SASL "
                f"{config['sasl_mechanism']} login: wrong user name or password, or a mechanism "
                "it does not accept"
            ) from None
        # Anything else: kafka-python tries and reports it.


def _sasl_login(sock: socket.socket, config: dict[str, Any], where: str) -> None:
    name = config["sasl_mechanism"]
    body = _request(sock, _SASL_HANDSHAKE, 1, _string(name))
    error, offered = _handshake_answer(body)
    if error == _UNSUPPORTED_SASL_MECHANISM:
        raise AuthenticationError(
            f"{where}: the broker does not accept SASL mechanism {name} (it offers "
            f"{', '.join(offered) or 'none'}): set sasl_mechanism="
        )
    if error == _ILLEGAL_SASL_STATE:
        raise AuthenticationError(
            f"{where}: this port does not take a SASL login (an SSL or PLAINTEXT listener?): "
            "use the broker's SASL port, or a URL without user:password"
        )
    if error:
        raise AuthenticationError(f"{where}: SASL handshake refused (Kafka error {error})")
    mechanism = get_sasl_mechanism(name)(host=sock.getpeername()[0], **config)
    while not mechanism.is_done():
        answer = _request(sock, _SASL_AUTHENTICATE, 1, _bytes(mechanism.auth_bytes()))
        error, message, token = _authenticate_answer(answer)
        if error:
            raise AuthenticationError(
                f"{where}: the broker refused the SASL {name} login of user "
                f"{config.get('sasl_plain_username')!r}: {message or f'Kafka error {error}'}"
            )
        try:
            mechanism.receive(token)
        except Exception as exc:  # a SCRAM server signature that does not verify
            raise AuthenticationError(
                f"{where}: the SASL {name} exchange failed ({type(exc).__name__}): "
                "the broker is not who it claims, or the mechanism is misconfigured"
            ) from None


def _request(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    """Send one request (header v1) and return the body of its answer."""
    header = struct.pack(">hhi", api_key, version, 1) + _string("mqkit-preflight")
    frame = header + body
    sock.sendall(struct.pack(">i", len(frame)) + frame)
    size = struct.unpack(">i", _read(sock, 4))[0]
    return _read(sock, size)[4:]  # without the correlation id


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise _Closed()
        data += chunk
    return data


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _bytes(raw: bytes) -> bytes:
    return struct.pack(">i", len(raw)) + raw


def _handshake_answer(body: bytes) -> tuple[int, list[str]]:
    error, count = struct.unpack_from(">hi", body)
    offset, names = 6, []
    for _ in range(max(count, 0)):
        (n,) = struct.unpack_from(">h", body, offset)
        names.append(body[offset + 2 : offset + 2 + n].decode(errors="replace"))
        offset += 2 + n
    return error, names


def _authenticate_answer(body: bytes) -> tuple[int, str, bytes]:
    error, n = struct.unpack_from(">hh", body)
    offset = 4
    message = ""
    if n >= 0:
        message = body[offset : offset + n].decode(errors="replace")
        offset += n
    (size,) = struct.unpack_from(">i", body, offset)
    token = body[offset + 4 : offset + 4 + max(size, 0)]
    return error, message, token


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` completes a TLS handshake (any certificate)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            with context.wrap_socket(raw, server_hostname=host):
                return True
    except (OSError, ValueError):
        return False
