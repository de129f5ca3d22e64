"""mqkit: one producer/consumer interface over Kafka, RabbitMQ, ActiveMQ, RocketMQ and
embedded queues, chosen by a URL."""

from mqkit.app import App, Handler, Middleware, Route
from mqkit.client import Broker, Consumer, Producer, connect
from mqkit.config import BrokerURL, parse_url
from mqkit.envelope import HeaderValue
from mqkit.errors import (
    AuthenticationError,
    BrokerUnavailable,
    ClosedError,
    ConfigError,
    DecodeError,
    DeliveryTimeout,
    MessageStateError,
    MqkitError,
    PermissionDenied,
    RetryLater,
    TLSError,
)
from mqkit.message import Delivery, Message, OutgoingMessage
from mqkit.registry import register
from mqkit.serialization import (
    BytesSerializer,
    FunctionSerializer,
    JsonSerializer,
    Serializer,
    TextSerializer,
)
from mqkit.spi import Features

# ``mqkit.aio.connect(...)`` after ``import mqkit``; imported last, it builds on the above.
from mqkit import aio  # isort: skip

__all__ = [
    "App",
    "AuthenticationError",
    "Broker",
    "BrokerURL",
    "BrokerUnavailable",
    "BytesSerializer",
    "ClosedError",
    "ConfigError",
    "Consumer",
    "DecodeError",
    "Delivery",
    "DeliveryTimeout",
    "Features",
    "FunctionSerializer",
    "Handler",
    "HeaderValue",
    "JsonSerializer",
    "Message",
    "MessageStateError",
    "Middleware",
    "MqkitError",
    "OutgoingMessage",
    "PermissionDenied",
    "Producer",
    "RetryLater",
    "Route",
    "Serializer",
    "TLSError",
    "TextSerializer",
    "aio",
    "connect",
    "parse_url",
    "register",
]
