"""The public façade: ``connect()`` → :class:`Broker` → :class:`Producer` / :class:`Consumer`.

Everything backends have in common lives here once: argument checks, serialization, decode-error
flagging, closed-object errors, flush on exit and context managers.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from mqkit import envelope, observe, registry
from mqkit.config import BrokerURL, parse_url, resolve
from mqkit.envelope import HeaderValue
from mqkit.errors import (
    BrokerUnavailable,
    ClosedError,
    ConfigError,
    DecodeError,
    DeliveryTimeout,
    MessageTooLarge,
    MqkitError,
)
from mqkit.message import (
    Delivery,
    Message,
    OutgoingMessage,
    check_ack_batch,
    new_message_id,
)
from mqkit.security import with_credentials
from mqkit.serialization import (
    Serializer,
    content_type_of,
    decode_content,
    for_content_type,
    get_serializer,
)
from mqkit.spi import (
    Backend,
    BatchAckConsumer,
    ConsumerDriver,
    Features,
    NowaitConsumer,
    NowaitProducer,
    ProducerDriver,
)
from mqkit.typing_payloads import check_model, to_model

if TYPE_CHECKING:
    from mqkit.spool import SpoolStatus

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def check_name(kind: str, name: str) -> str:
    """Topic and group names portable to every broker: ``[A-Za-z0-9._-]``, at most 200."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{kind} name {name!r} is not portable: use 1-200 characters from A-Z a-z 0-9 . _ -"
        )
    return name


_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")


def check_message_id(message_id: str) -> str:
    """An id given to ``send(message_id=...)``, in the form mqkit makes (32 lowercase hex
    digits): every adapter reads that form back as the id (Kafka takes only it)."""
    if not isinstance(message_id, str) or not _MESSAGE_ID.match(message_id):
        raise ValueError(
            f"message_id must be 32 lowercase hex digits, as mqkit makes them "
            f"(mqkit.message.new_message_id()), not {message_id!r}"
        )
    return message_id


def _check_fields(
    content_type: object, content_encoding: object, correlation_id: object, reply_to: object
) -> None:
    """The optional str fields of ``send()``: each a non-empty ``str`` or ``None``."""
    for name, field in (
        ("content_type", content_type),
        ("content_encoding", content_encoding),
        ("correlation_id", correlation_id),
        ("reply_to", reply_to),  # any destination the replier's transport understands
    ):
        if field is not None and (not isinstance(field, str) or not field):
            raise TypeError(f"{name} must be a non-empty str or None, not {field!r}")


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
        self._content_type = content_type_of(serializer)
        self._inbox: _ReplyInbox | None = None
        self._nowait = driver if isinstance(driver, NowaitProducer) else None
        self._topics_checked: set[str] = set()
        # Flush what was sent if the program exits without closing (no loss by forgetting):
        # a finalizer also runs at interpreter exit.
        self._finalizer = weakref.finalize(self, driver.close)

    def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Send ``value`` to ``topic``; return its id. One key's messages keep their order.

        ``content_type`` defaults to the serializer's (``application/json`` for JSON);
        ``correlation_id`` and ``reply_to`` travel in the transport's native fields, so
        services that are not mqkit read them (:meth:`request` sets both).
        ``message_id`` sends the message under an id fixed beforehand instead of a new one:
        a message sent again (an outbox relay after a crash, a spool forwarding) keeps its id,
        so the consumers' idempotency helper drops the copy.
        """
        message = self._encode(
            topic,
            value,
            key=key,
            headers=headers,
            content_type=content_type,
            content_encoding=content_encoding,
            correlation_id=correlation_id,
            reply_to=reply_to,
            message_id=message_id,
        )
        if observe.active is None:
            self._driver.send(message)
        else:
            self._send(message)
        return message.id

    def _send(self, message: OutgoingMessage) -> None:
        hooks = observe.active
        if hooks is None:
            self._driver.send(message)
            return
        scope = hooks.sending(self._broker.system, message)
        try:
            self._driver.send(message)
        except BaseException as exc:
            scope.end(exc)
            raise
        scope.end(None)

    def _send_nowait(self, message: OutgoingMessage) -> bool:
        """The driver's ``send``, if it can take ``message`` without waiting (for
        :mod:`mqkit.aio`, which wraps it in the send's observe scope itself); ``False``: not
        taken, nothing done. Raises what ``send`` raises."""
        return self._nowait is not None and self._nowait.send_nowait(message)

    def _encode(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        check_topic: bool = True,
        message_id: str | None = None,
    ) -> OutgoingMessage:
        """Check and serialize one message, without sending it (``mqkit.aio`` encodes on the
        event loop and sends from its sender thread). ``check_topic=False`` takes a reply's
        destination as the requester gave it (:meth:`reply`)."""
        self._check_open()
        if check_topic and (type(topic) is not str or topic not in self._topics_checked):
            check_name("topic", topic)
            if len(self._topics_checked) < 1024:  # names checked once, not per message
                self._topics_checked.add(topic)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be str or None, not {type(key).__name__}")
        if (
            content_type is not None
            or content_encoding is not None
            or correlation_id is not None
            or reply_to is not None
        ):
            _check_fields(content_type, content_encoding, correlation_id, reply_to)
        body = self._serializer.dumps(value)
        if len(body) > self._max_body:
            raise MessageTooLarge(
                f"message for {topic!r} is {len(body)} bytes; {self._broker.url.scheme}:// "
                f"takes at most {self._max_body} (Features.max_body_size): split it, or store "
                "it elsewhere and send a reference"
            )
        # positional, in OutgoingMessage's field order: built once per send, and keywords and
        # default factories took about 0.8 µs of the ~3 µs the core spends on a message
        return OutgoingMessage(
            topic,
            body,
            key,
            envelope.check_headers(headers) if headers else {},
            new_message_id() if message_id is None else check_message_id(message_id),
            time.time(),
            content_type or self._content_type,
            content_encoding,
            correlation_id,
            reply_to,
        )

    def reply_message(
        self,
        request: Message,
        value: Any,
        *,
        headers: Mapping[str, HeaderValue] | None = None,
        content_type: str | None = None,
    ) -> OutgoingMessage:
        """The encoded reply to ``request`` (:meth:`reply` sends it; ``mqkit.aio`` too)."""
        if not request.reply_to:
            raise ConfigError(
                f"message {request.id} on {request.topic!r} has no reply_to: nobody waits "
                "for a reply"
            )
        return self._encode(
            request.reply_to,
            value,
            key=request.key,
            headers=headers,
            content_type=content_type,
            correlation_id=request.correlation_id or request.id,
            check_topic=False,
        )

    def reply(
        self,
        request: Message,
        value: Any,
        *,
        headers: Mapping[str, HeaderValue] | None = None,
        content_type: str | None = None,
    ) -> str:
        """Send ``value`` to ``request.reply_to`` with the request's correlation id (its id when
        it has none), as a request/reply client expects; returns the reply's id.

        The reply-to is used as received, not checked as an mqkit topic name: a client that is
        not mqkit names its own destinations (a JMS temporary queue, an AMQP reply queue), and
        the adapter sends there."""
        message = self.reply_message(request, value, headers=headers, content_type=content_type)
        self._send(message)
        return message.id

    def request(
        self,
        topic: str,
        value: Any,
        *,
        timeout: float = 30.0,
        key: str | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
    ) -> Message:
        """Send ``value`` and wait up to ``timeout`` seconds for the reply (see :meth:`reply`).

        Replies come to a reply topic of this producer (``mqkit.reply.<random>``, one group of
        its own, created on the first request with the backend's throw-away group options).
        The reply is acked before it is returned. Raises :class:`~mqkit.errors.DeliveryTimeout`
        when no reply came in time.
        """
        self._check_open()
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._inbox is None:
                self._inbox = _ReplyInbox(self._broker, self._serializer)
            inbox = self._inbox
        correlation = new_message_id()
        inbox.expect(correlation)
        try:
            self.send(
                topic,
                value,
                key=key,
                headers=headers,
                correlation_id=correlation,
                reply_to=inbox.topic,
            )
            self.flush(max(0.0, deadline - time.monotonic()))
            return inbox.wait(correlation, deadline, topic)
        finally:
            inbox.forget(correlation)

    @property
    def spool(self) -> SpoolStatus | None:
        """What the spool of a producer made with ``spool=`` holds and did; else ``None``."""
        status = getattr(self._driver, "status", None)
        return status if isinstance(status, _spool_status()) else None

    def flush(self, timeout: float | None = None) -> None:
        """Block until every message sent so far is confirmed by the backend (with a spool:
        or safe in the spool while the broker is unreachable)."""
        self._check_open()
        self._driver.flush(timeout)

    def close(self) -> None:
        """Flush and release the producer; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer.detach()
        try:
            self._driver.close()
        finally:
            if self._inbox is not None:
                self._inbox.close()


def _spool_status() -> type[SpoolStatus]:
    from mqkit.spool import SpoolStatus

    return SpoolStatus


class Consumer(_Closeable):
    """Receives messages of one group; iterate it or call :meth:`receive`."""

    def __init__(
        self,
        broker: Broker,
        driver: ConsumerDriver,
        topics: tuple[str, ...],
        group: str,
        serializer: Serializer,
        model: type[Any] | None = None,
    ) -> None:
        self._broker = broker
        self._driver = driver
        self._serializer = serializer
        self._model = model
        self.topics = topics
        self.group = group
        self._closed = False
        self._what = f"consumer of {', '.join(topics)} in group {group!r} on {broker.url}"
        self._lock = threading.Lock()
        self._nowait = driver if isinstance(driver, NowaitConsumer) else None
        self._batch_ack = driver if isinstance(driver, BatchAckConsumer) else None

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, or ``None`` if none came within ``timeout`` seconds.

        ``timeout=None`` waits until a message arrives or the consumer is closed.
        """
        self._check_open()
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        delivery = self._driver.receive(timeout)
        return None if delivery is None else self._wrap(delivery)

    def receive_many(self, max_messages: int, timeout: float | None = None) -> list[Message]:
        """Up to ``max_messages`` messages: waits up to ``timeout`` seconds for the first (as
        :meth:`receive`), then takes those that have arrived already, without waiting more.
        An empty list on timeout. Settle them one by one or all at once with :meth:`ack_many`.
        """
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise ValueError(f"max_messages must be an int >= 1, not {max_messages!r}")
        first = self.receive(timeout)
        if first is None:
            return []
        batch = [first]
        receive = self._driver.receive
        while len(batch) < max_messages and not self._closed:
            delivery = receive(0)
            if delivery is None:
                break
            batch.append(self._wrap(delivery))
        return batch

    def ack_many(self, messages: Iterable[Message]) -> None:
        """Ack every one of ``messages`` (received from this consumer, not settled yet), with
        one round trip where the backend has one: one offset commit on Kafka, one transaction
        on SQLite, one socket write on RabbitMQ. When it returns, each is acked as
        ``message.ack()`` would have acked it. Nothing is acked if one of them cannot be."""
        batch = list(messages)
        check_ack_batch(
            batch,
            ours=lambda m: isinstance(m, Message) and m._settle == self._settle,
            settled=lambda m: m.settled,
            owner=self._what,
        )
        if self._closed:
            raise ClosedError(
                f"{self._what} is closed; its unacked messages were given back and will be "
                "delivered again"
            )
        if not batch:
            return
        for message in batch:
            message._mark("ack")
        if self._batch_ack is not None:
            self._batch_ack.ack_many([message.delivery for message in batch])
        else:
            for message in batch:
                self._driver.ack(message.delivery)
        hooks = observe.active
        if hooks is not None:
            for message in batch:
                hooks.settled(self._broker.system, self.group, message, True)

    def _receive_nowait(self) -> Message | None:
        """:meth:`receive` of a message the driver already holds in memory, without waiting
        (for :mod:`mqkit.aio`); ``None``: none there, or the driver cannot tell."""
        if self._nowait is None or self._closed:
            return None
        delivery = self._nowait.receive_nowait()
        return None if delivery is None else self._wrap(delivery)

    def _ack_nowait(self, message: Message) -> bool:
        """``message.ack()`` if the driver can do it without waiting (for :mod:`mqkit.aio`);
        ``False``: nothing was done (the message is still unsettled), ack it the usual way."""
        if self._nowait is None or self._closed or message.settled is not None:
            return False
        if not self._nowait.ack_nowait(message.delivery):
            return False
        message._mark("ack")
        hooks = observe.active
        if hooks is not None:
            hooks.settled(self._broker.system, self.group, message, True)
        return True

    def _wrap(self, delivery: Delivery) -> Message:
        value: Any = None
        error: DecodeError | None = None
        try:
            serializer = for_content_type(self._serializer, delivery.content_type)
            value = serializer.loads(decode_content(delivery.body, delivery.content_encoding))
            if self._model is not None:
                value = to_model(self._model, value)
        except Exception as exc:  # any serializer failure flags the message, never crashes
            what = "validated as " + self._model.__name__ if self._model else "decoded"
            error = DecodeError(
                f"message {delivery.id} on {delivery.topic!r} could not be {what} "
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
        hooks = observe.active
        if hooks is not None:
            hooks.settled(self._broker.system, self.group, message, ack)

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


class _ReplyInbox:
    """The replies to one producer's requests: a consumer of a reply topic of its own.

    Any thread waiting for a reply receives for all waiting threads (one at a time) and files
    what it reads under its correlation id; a reply nobody waits for any more is dropped.
    """

    def __init__(self, broker: Broker, serializer: Serializer) -> None:
        self.topic = f"mqkit.reply.{new_message_id()[:16]}"
        options = dict(broker.features.throwaway_group_options)
        self._consumer = broker.consumer(
            self.topic, group=self.topic, serializer=serializer, **options
        )
        self._receiving = threading.Lock()
        self._lock = threading.Lock()
        self._waiting: set[str] = set()
        self._arrived: dict[str, Message] = {}

    def expect(self, correlation: str) -> None:
        with self._lock:
            self._waiting.add(correlation)

    def forget(self, correlation: str) -> None:
        with self._lock:
            self._waiting.discard(correlation)
            self._arrived.pop(correlation, None)

    def wait(self, correlation: str, deadline: float, topic: str) -> Message:
        while True:
            with self._lock:
                reply = self._arrived.pop(correlation, None)
            if reply is not None:
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeliveryTimeout(
                    f"no reply to the request on {topic!r} (correlation id {correlation}) "
                    "in time: is a handler with a reply running for that topic?"
                )
            if not self._receiving.acquire(timeout=min(left, 0.05)):
                continue
            try:
                message = self._consumer.receive(timeout=min(left, 0.2))
            finally:
                self._receiving.release()
            if message is None:
                continue
            message.ack()
            with self._lock:
                if message.correlation_id in self._waiting:
                    self._arrived[message.correlation_id] = message

    def close(self) -> None:
        self._consumer.close()


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
    def system(self) -> str:
        """The backend as OpenTelemetry's ``messaging.system`` names it (``kafka``,
        ``rabbitmq``, ``activemq``, ``rocketmq``; ``memory`` and ``sqlite`` as they are)."""
        return observe.system_of(self.url.scheme)

    @property
    def backend(self) -> Backend:
        """The adapter's backend object, for advanced, backend-specific use."""
        return self._backend

    def ping(self, timeout: float = 5.0) -> float:
        """Check that the backend answers and takes the credentials; return the round trip in
        seconds. Raises :class:`~mqkit.errors.BrokerUnavailable` naming the cause when it does
        not, or gave no answer within ``timeout`` seconds (however the client library waits).
        A health check: ``mqkit ping URL`` and readiness probes call it."""
        self._check_open()
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        backend = self._backend
        ping = getattr(backend, "ping", None)
        if ping is None:  # a backend written against the bare protocol

            def ping(timeout: float) -> None:
                backend.producer({}).close()

        started = time.monotonic()
        bounded(lambda: ping(timeout), timeout, f"{self.url.redacted()}: ping")
        return time.monotonic() - started

    def depth(self, group: str, topics: str | Sequence[str]) -> int | None:
        """How many messages of ``topics`` ``group`` has not acked yet (its backlog, with what
        is in flight), or ``None`` where the backend cannot tell (see each adapter's docs)."""
        self._check_open()
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        depth = getattr(self._backend, "depth", None)
        return None if depth is None else depth(group, names)

    def producer(
        self,
        *,
        serializer: str | Serializer | None = None,
        spool: str | Path | None = None,
        spool_max: int | None = None,
        **options: Any,
    ) -> Producer:
        """A producer; ``options`` are the backend's producer options.

        With ``spool="path"`` (store-and-forward, :mod:`mqkit.spool`) every message is first
        committed to that local SQLite file and forwarded in order by a thread of its own, so
        ``send`` keeps working while the broker is unreachable; at most ``spool_max``
        messages wait (:class:`~mqkit.spool.SpoolFull` beyond).
        """
        self._check_open()
        ser = get_serializer(serializer) if serializer is not None else self._serializer
        driver: ProducerDriver
        if spool is not None:
            from mqkit.spool import DEFAULT_SPOOL_MAX, SpoolingDriver

            backend = self._backend
            driver = SpoolingDriver(
                lambda: backend.producer(options),
                spool,
                system=self.system,
                max_messages=DEFAULT_SPOOL_MAX if spool_max is None else spool_max,
            )
        elif spool_max is not None:
            raise ConfigError("spool_max= needs spool='path'")
        else:
            driver = self._backend.producer(options)
        producer = Producer(self, driver, ser)
        self._children.add(producer)
        return producer

    def consumer(
        self,
        topics: str | Sequence[str],
        *,
        group: str,
        serializer: str | Serializer | None = None,
        model: type[Any] | None = None,
        **options: Any,
    ) -> Consumer:
        """A member of ``group`` reading ``topics``; the group exists once this returns.

        With ``model`` (a dataclass or a pydantic model) each value is validated into it; a
        value that does not fit is a :class:`DecodeError` on ``Message.error``."""
        self._check_open()
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        if not names:
            raise ConfigError("consumer needs at least one topic")
        for name in names:
            check_name("topic", name)
        check_name("group", group)
        ser = get_serializer(serializer) if serializer is not None else self._serializer
        if model is not None:
            check_model(model)
        driver = self._backend.consumer(names, group, options)
        consumer = Consumer(self, driver, names, group, ser, model)
        self._children.add(consumer)
        return consumer

    def declare(self, topics: str | Sequence[str], *, group: str, **options: Any) -> None:
        """Create ``group`` of ``topics`` ahead of time (as a consumer would, then leave it):
        from now on messages sent to the topics are kept for it, even on backends that keep
        messages only for existing groups (:attr:`Features.retains_without_group`)."""
        self.consumer(topics, group=group, **options).close()

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


def bounded(call: Callable[[], object], timeout: float, what: str) -> None:
    """Run ``call()`` in a daemon thread and wait at most ``timeout`` seconds (a client library
    may wait far longer for a silent host): its error is raised here as
    :class:`~mqkit.errors.BrokerUnavailable`, and so is no answer in time."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, name="mqkit-ping", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise BrokerUnavailable(f"{what}: no answer within {timeout:g} s")
    error = outcome[0]
    if error is None:
        return
    if isinstance(error, BrokerUnavailable):
        raise error
    raise BrokerUnavailable(f"{what}: {type(error).__name__}: {error}") from error


def connect(
    url: str | None = None, *, serializer: str | Serializer | None = None, **options: Any
) -> Broker:
    """Connect to the broker named by ``url`` (or ``MQKIT_URL``, ``mqkit.toml``, the default).

    ``options`` override the URL's query parameters; unknown ones are a :class:`ConfigError`.
    """
    settings = resolve(url)
    parsed = parse_url(settings.url)
    parsed, merged = with_credentials(parsed, {**settings.options, **parsed.params, **options})
    factory = registry.lookup(parsed.scheme)
    backend = factory(parsed, merged)
    return Broker(parsed, backend, get_serializer(serializer))
