"""Every error mqkit raises derives from :class:`MqkitError`, so callers can catch one type."""

from __future__ import annotations


class MqkitError(Exception):
    """Base class of all mqkit errors."""


class ConfigError(MqkitError, ValueError):
    """The URL, option or config file is wrong; the message says what and how to fix it."""


class BrokerUnavailable(MqkitError, ConnectionError):
    """The broker could not be reached or refused us (host down, bad credentials, wrong vhost)."""


class TLSError(BrokerUnavailable):
    """The TLS handshake failed: an untrusted, expired or wrong-host certificate, a client
    certificate the broker refused, or TLS spoken to a plaintext port (or the reverse)."""


class AuthenticationError(BrokerUnavailable):
    """The broker refused the credentials: unknown user, wrong password or key, or a SASL
    mechanism it does not offer."""


class PermissionDenied(MqkitError):
    """Logged in, but not allowed: the user has no right on this vhost, topic, queue or group."""


class ClosedError(MqkitError):
    """The broker, producer or consumer was used after ``close()``."""


class DeliveryTimeout(MqkitError, TimeoutError):
    """``flush()`` gave up before the backend confirmed every message sent."""


class DecodeError(MqkitError):
    """A received body could not be decoded by the consumer's serializer.

    The message is still delivered (``Message.error`` holds this exception) so that it is never
    lost: ack it, nack it or dead-letter it like any other.
    """


class MessageStateError(MqkitError):
    """A message was acked or nacked twice."""


class MessageTooLarge(MqkitError, ValueError):
    """A body is larger than the backend takes (:attr:`mqkit.spi.Features.max_body_size`)."""


class RetryLater(MqkitError):
    """Not a failure: give the message back and look at it again after ``retry_after`` seconds.

    A handler (or middleware) raises it when the message cannot be processed *yet* (another
    delivery of it is in progress, say). Retry middleware reschedules it without counting an
    attempt and never dead-letters it; without retry middleware the App nacks it like any error.
    """

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
