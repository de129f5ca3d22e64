"""The public façade: ``connect()`` → :class:`Broker` → :class:`Producer` / :class:`Consumer`.

Everything backends have in common lives here once: argument checks, serialization, decode-error
flagging, closed-object errors, flush on exit and context managers.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from mqkit import envelope, registry
from mqkit.config import BrokerURL, parse_url, resolve
from mqkit.errors import ClosedError, ConfigError, DecodeError, MessageTooLarge, MqkitError
from mqkit.message import Delivery, Message, OutgoingMessage
from mqkit.serialization import Serializer, get_serializer
from mqkit.spi import Backend, ConsumerDriver, Features, ProducerDriver

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def check_name(kind: str, name: str) -> str:
    """Topic and group names portable to every broker: ``[A-Za-z0-9._-]``, at most 200."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{kind} name {name!r} is not portable: use 1-200 characters from A-Z a-z 0-9 . _ -"
        )
    return name


class _Closeable:
    _closed: bool
    _what: str

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self._what} is closed; create a new one")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class Producer(_Closeable):
    """Sends messages. ``send`` may buffer; ``flush`` and ``close`` wait for confirmation."""

    def __init__(self, broker: Broker, driver: ProducerDriver, serializer: Serializer) -> None:
        self._broker = broker
        self._driver = driver
        self._serializer = serializer
        self._closed = False
        self._what = f"producer on {broker.url}"
        self._lock = threading.Lock()
        self._max_body = broker.features.max_body_size
        # Flush what was sent if the program exits without closing (no loss by forgetting):
        # a finalizer also runs at interpreter exit.
        self._finalizer = weakref.finalize(self, driver.close)

    def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Send ``value`` to ``topic``; return its id. One key's messages keep their order."""
        self._check_open()
        check_name("topic", topic)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be str or None, not {type(key).__name__}")
        body = self._serializer.dumps(value)
        if len(body) > self._max_body:
            raise MessageTooLarge(
                f"message for {topic!r} is {len(body)} bytes; {self._broker.url.scheme}:// "
                f"takes at most {self._max_body} (Features.max_body_size): split it, or store "
                "it elsewhere and send a reference"
            )
        message = OutgoingMessage(
            topic=topic, body=body, key=key, headers=envelope.check_headers(headers)
        )
        self._driver.send(message)
        return message.id

    def flush(self, timeout: float | None = None) -> None:
        """Block until every message sent so far is confirmed by the backend."""
        self._check_open()
        self._driver.flush(timeout)

    def close(self) -> None:
        """Flush and release the producer; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer.detach()
        self._driver.close()


class Consumer(_Closeable):
    """Receives messages of one group; iterate it or call :meth:`receive`."""

    def __init__(
        self,
        broker: Broker,
        driver: ConsumerDriver,
        topics: tuple[str, ...],
        group: str,
        serializer: Serializer,
    ) -> None:
        self._broker = broker
        self._driver = driver
        self._serializer = serializer
        self.topics = topics
        self.group = group
        self._closed = False
        self._what = f"consumer of {', '.join(topics)} in group {group!r} on {broker.url}"
        self._lock = threading.Lock()

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, or ``None`` if none came within ``timeout`` seconds.

        ``timeout=None`` waits until a message arrives or the consumer is closed.
        """
        self._check_open()
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        delivery = self._driver.receive(timeout)
        return None if delivery is None else self._wrap(delivery)

    def _wrap(self, delivery: Delivery) -> Message:
        value: Any = None
        error: DecodeError | None = None
        try:
            value = self._serializer.loads(delivery.body)
        except Exception as exc:  # any serializer failure flags the message, never crashes
            error = DecodeError(
                f"message {delivery.id} on {delivery.topic!r} could not be decoded "
                f"({type(exc).__name__}: {exc}); its raw body is in Message.body"
            )
            error.__cause__ = exc
        return Message(delivery, value, error, self._settle)

    def _settle(self, message: Message, ack: bool, requeue: bool, delay: float) -> None:
        if self._closed:
            raise ClosedError(
                f"{self._what} is closed; message {message.id} was given back and will be "
                "delivered again"
            )
        if ack:
            self._driver.ack(message.delivery)
        else:
            self._driver.nack(message.delivery, requeue=requeue, delay=delay)

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until the consumer is closed (e.g. from a signal handler)."""
        while not self._closed:
            try:
                message = self.receive(timeout=0.5)
            except ClosedError:
                return
            if message is not None:
                yield message

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop receiving; unacked messages go back to the group. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._driver.close()


class Broker(_Closeable):
    """A connection to one backend, made by :func:`connect`; makes producers and consumers."""

    def __init__(self, url: BrokerURL, backend: Backend, serializer: Serializer) -> None:
        self.url = url
        self._backend = backend
        self._serializer = serializer
        self._closed = False
        self._what = f"broker {url}"
        self._children: weakref.WeakSet[Producer | Consumer] = weakref.WeakSet()
        self._lock = threading.Lock()

    @property
    def features(self) -> Features:
        return self._backend.features

    @property
    def backend(self) -> Backend:
        """The adapter's backend object, for advanced, backend-specific use."""
        return self._backend

    def producer(self, *, serializer: str | Serializer | None = None, **options: Any) -> Producer:
        self._check_open()
        ser = get_serializer(serializer) if serializer is not None else self._serializer
        producer = Producer(self, self._backend.producer(options), ser)
        self._children.add(producer)
        return producer

    def consumer(
        self,
        topics: str | Sequence[str],
        *,
        group: str,
        serializer: str | Serializer | None = None,
        **options: Any,
    ) -> Consumer:
        """A member of ``group`` reading ``topics``; the group exists once this returns."""
        self._check_open()
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        if not names:
            raise ConfigError("consumer needs at least one topic")
        for name in names:
            check_name("topic", name)
        check_name("group", group)
        ser = get_serializer(serializer) if serializer is not None else self._serializer
        driver = self._backend.consumer(names, group, options)
        consumer = Consumer(self, driver, names, group, ser)
        self._children.add(consumer)
        return consumer

    def close(self) -> None:
        """Close every producer (flushing) and consumer made here, then the backend."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        errors: list[BaseException] = []
        for child in list(self._children):
            try:
                child.close()
            except MqkitError as exc:
                errors.append(exc)
        self._backend.close()
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"Broker({self.url.redacted()!r})"


def connect(
    url: str | None = None, *, serializer: str | Serializer | None = None, **options: Any
) -> Broker:
    """Connect to the broker named by ``url`` (or ``MQKIT_URL``, ``mqkit.toml``, the default).

    ``options`` override the URL's query parameters; unknown ones are a :class:`ConfigError`.
    """
    settings = resolve(url)
    parsed = parse_url(settings.url)
    merged: dict[str, Any] = {**settings.options, **parsed.params, **options}
    factory = registry.lookup(parsed.scheme)
    backend = factory(parsed, merged)
    return Broker(parsed, backend, get_serializer(serializer))
