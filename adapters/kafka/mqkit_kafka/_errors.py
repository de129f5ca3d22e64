"""Turning kafka-python failures into mqkit errors that name the broker and the cause."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from kafka import errors as kerrors  # type: ignore[import-untyped]

from mqkit.errors import (
    AuthenticationError,
    BrokerUnavailable,
    ConfigError,
    MqkitError,
    PermissionDenied,
)
from mqkit.security import tls_failure


def probe(hosts: Sequence[tuple[str, int]], timeout: float = 2.0) -> str:
    """Why the bootstrap hosts cannot be reached, in words (e.g. 'connection refused')."""
    causes = []
    for host, port in hosts:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                causes.append(f"{host}:{port} accepts TCP connections but gave no Kafka answer")
        except socket.gaierror as exc:
            causes.append(f"{host}: unknown host ({exc.strerror or exc})")
        except TimeoutError:
            causes.append(f"{host}:{port}: no answer within {timeout:g} s")
        except OSError as exc:
            causes.append(f"{host}:{port}: {(exc.strerror or str(exc)).lower()}")
    return "; ".join(causes)


def is_auth_error(exc: BaseException) -> bool:
    return isinstance(
        exc,
        (
            kerrors.SaslAuthenticationFailedError,
            kerrors.IllegalSaslStateError,
            kerrors.UnsupportedSaslMechanismError,
        ),
    )


def translate(exc: BaseException, where: str, hosts: Sequence[tuple[str, int]]) -> MqkitError:
    """An mqkit error for a kafka-python exception raised while talking to ``where``."""
    if isinstance(exc, MqkitError):
        return exc
    failure = tls_failure(exc, where)
    if failure is not None:
        return failure
    if is_auth_error(exc):
        return AuthenticationError(f"{where}: the broker refused our credentials ({exc})")
    if isinstance(exc, kerrors.AuthorizationError):
        return PermissionDenied(
            f"{where}: not authorized ({exc}); the user needs an ACL for it on the broker"
        )
    if isinstance(exc, kerrors.KafkaConfigurationError):
        return ConfigError(f"{where}: {exc}")
    if isinstance(exc, kerrors.InvalidSessionTimeoutError):
        return ConfigError(
            f"{where}: the broker refused session_timeout: it must lie within the broker's "
            "group.min.session.timeout.ms and group.max.session.timeout.ms (Apache Kafka's "
            "defaults: 6 s and 30 min)"
        )
    if isinstance(
        exc,
        kerrors.KafkaTimeoutError
        | kerrors.KafkaConnectionError
        | kerrors.NodeNotReadyError
        | OSError,
    ):
        return BrokerUnavailable(f"{where}: broker not reachable ({probe(hosts) or exc})")
    if isinstance(exc, kerrors.MessageSizeTooLargeError):
        return MqkitError(f"{where}: message too large ({exc}); raise max_message_bytes")
    return MqkitError(f"{where}: {type(exc).__name__}: {exc}")
