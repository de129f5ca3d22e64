"""``rocketmq://`` — RocketMQ 5.x through its gRPC proxy, with Apache's ``rocketmq-python-client``.

Mapping (see docs/rocketmq.md): a producer is one client ``Producer``; a consumer is one
``SimpleConsumer`` of the consumer group (each group gets every message, members compete).
``receive`` pops a batch with an invisible duration (``visibility_timeout``) and hands it out one
message at a time; ``ack`` acks the receipt handle; ``nack`` changes the invisible duration to
the requested delay (RocketMQ redelivers with ``delivery_attempt`` + 1); ``close`` makes what was
received but not acked visible again at once. Keys are message groups (FIFO messages), so per-key
order holds in consumer groups that are FIFO on the cluster. With ``namesrv``, a consumer group new
to a topic is positioned at the topic's end when it subscribes (RocketMQ would position it at its
first poll); with ``auto_create``, missing topics and groups are created (``admin``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]

from mqkit.config import BrokerURL
from mqkit.errors import (
    BrokerUnavailable,
    ClosedError,
    ConfigError,
    DeliveryTimeout,
    MqkitError,
)
from mqkit.message import Delivery, OutgoingMessage
from mqkit.options import Options
from mqkit.spi import Features
from mqkit_rocketmq import _codec, admin
from mqkit_rocketmq._drivers import load_v5

log = logging.getLogger(__name__)

_simple: Any = load_v5()
_client: Any = importlib.import_module("rocketmq.v5.client")
_producer: Any = importlib.import_module("rocketmq.v5.producer")
_model: Any = importlib.import_module("rocketmq.v5.model")
_exc: Any = importlib.import_module("rocketmq.v5.exception")
_util: Any = importlib.import_module("rocketmq.v5.util")
_proto: Any = importlib.import_module("rocketmq.grpc_protocol")
_rpc: Any = importlib.import_module("rocketmq.v5.client.connection.rpc_client")

DEFAULT_PORT = 8081

Code: Any = _proto.Code
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}


def _start(client: Any) -> None:
    """``client.startup()`` in a short-lived thread whose event loop is the client's I/O loop.

    The client makes a consumer's telemetry stream (the subscription) in the callback of its
    first route lookup. When the lookup is answered before that callback is added (a busy
    machine), the callback runs in the thread calling ``startup()``, where gRPC's asyncio layer
    needs a current event loop; in a thread without one the stream is never made and the
    subscription never confirmed. Starting from a thread of our own gives the client the loop
    it expects without setting one in the caller's thread.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.set_event_loop(_rpc.RpcClient.get_channel_io_loop())
            client.startup()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="mqkit-rocketmq-startup", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


class _SimpleConsumer(_simple.SimpleConsumer):  # type: ignore[misc]
    """The official SimpleConsumer, remembering whether the server says its group is FIFO, and
    able to send its settings again at once."""

    fifo: bool | None = None
    _resent_at = 0.0

    def reset_setting(self, settings: Any) -> None:
        if settings is not None and settings.HasField("subscription"):
            self.fifo = bool(settings.subscription.fifo)
        super().reset_setting(settings)

    def resend_settings(self) -> None:
        """Make the telemetry stream again and send the subscription settings on it.

        A restarted proxy knows no subscription, and answers a receive with an error (5.3.3: a
        NullPointerException, "settings is null") until the client sends its settings again;
        the client's own stream ends with the old connection and its settings are sent again
        only every 5 minutes. At most once a second; runs on the client's I/O loop, where gRPC's
        asyncio calls must be made.
        """
        now = time.monotonic()
        if now - self._resent_at < 1.0:
            return
        self._resent_at = now
        manager = getattr(self, "_Client__telemetry_manager", None)
        if manager is None:
            return

        def resend() -> None:
            try:
                for endpoints in self.route_manager.get_all_endpoints().values():
                    manager.retrieve_telemetry_stream_stream_call(endpoints, rebuild=True)
                    manager.setting_write(endpoints)
            except Exception as exc:  # the next failed poll tries again
                log.info("could not send the consumer's settings again: %s", exc)

        _rpc.RpcClient.get_channel_io_loop().call_soon_threadsafe(resend)


class V5Backend:
    """One RocketMQ 5 proxy endpoint (a list of proxies behind one access point)."""

    def __init__(self, url: BrokerURL, options: Mapping[str, Any]) -> None:
        opts = Options(f"{url.scheme}://", options)
        if not url.hosts:
            raise ConfigError(
                f"{url}: no proxy address; write rocketmq://host:{DEFAULT_PORT} (the gRPC "
                "endpoint of a RocketMQ 5 proxy)"
            )
        addresses = []
        for host, port in url.hosts:
            if ":" in host:
                raise ConfigError(
                    f"{url}: the RocketMQ client cannot reach IPv6 literals; use a host name"
                )
            addresses.append(f"{host}:{port or DEFAULT_PORT}")
        self.endpoint = ";".join(addresses)
        self.where = f"RocketMQ proxy at {', '.join(addresses)}"
        if url.username is not None and url.password is None:
            raise ConfigError(
                f"{url}: give both the access key and the secret key "
                "(rocketmq://ACCESS_KEY:SECRET_KEY@host:port)"
            )
        self.namespace = url.path.strip("/")
        if "/" in self.namespace:
            raise ConfigError(f"{url}: the path is the namespace and cannot contain '/'")
        self.request_timeout = opts.int("request_timeout", 3, minimum=1)
        self.connect_timeout = opts.float("connect_timeout", 5.0, minimum=0.1)
        # The proxy already answered the connect probe; confirming a subscription is the
        # settings round trip on the client's telemetry stream, which a busy proxy (or a
        # loaded machine) can take well over connect_timeout to answer.
        self.subscribe_timeout = opts.float("subscribe_timeout", 30.0, minimum=0.1)
        self.tls = opts.bool("tls", False)
        self.visibility = opts.int("visibility_timeout", 30, minimum=1)
        self.prefetch = opts.int("prefetch", 16, minimum=1)
        self.long_polling = opts.int("long_polling_timeout", 5, minimum=1)
        self.max_in_flight = opts.int("max_in_flight", 1024, minimum=1)
        # auto_create: create missing topics (MIXED) and consumer groups (FIFO) through the
        # name server's brokers, for development and test clusters (see mqkit_rocketmq.admin).
        self.namesrv = opts.str("namesrv", "") or None
        self.auto_create = opts.bool("auto_create", False)
        opts.done()
        if self.auto_create and self.namesrv is None:
            raise ConfigError(
                f"{url}: auto_create creates topics through a name server: add "
                "namesrv=HOST:9876 (a RocketMQ 5 proxy cannot create topics itself)"
            )
        if self.prefetch > 32:
            raise ConfigError(f"{url}: prefetch={self.prefetch}: RocketMQ pops at most 32")
        self.config = _client.ClientConfiguration(
            self.endpoint,
            _client.Credentials(url.username or "", url.password or ""),
            namespace=self.namespace,
            request_timeout=self.request_timeout,
        )
        if self.config.rpc_endpoints.facade == "":
            raise ConfigError(f"{url}: cannot make an endpoint of {self.endpoint!r}")
        self.features = Features(
            key_order_on_nack=True,
            delayed_redelivery=True,
            persistent=True,
            max_body_size=4 << 20,
        )
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._known_topics: set[str] = set()
        self._known_groups: set[str] = set()
        self._position_lock = threading.Lock()
        self.unseen = _PerMessage()
        self.handed = _PerMessage()
        self.acked = _PerMessage()
        self._closed = False
        self._probe_id = f"mqkit-probe-{os.getpid()}-{id(self):x}"
        self.probe()

    # -- talking to the proxy directly, to tell failures apart ------------------------------

    def _stub(self) -> Any:
        with self._lock:
            if self._channel is None:
                facade = self.config.rpc_endpoints.facade
                if self.tls:
                    self._channel = grpc.secure_channel(facade, grpc.ssl_channel_credentials())
                else:
                    self._channel = grpc.insecure_channel(facade)
            return _proto.MessagingServiceStub(self._channel)

    def _metadata(self) -> Any:
        return _util.Signature.metadata(self.config, self._probe_id)

    def unreachable(self, exc: BaseException, doing: str) -> BrokerUnavailable:
        if isinstance(exc, grpc.RpcError):
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            cause = f"{code.name if code else 'error'}: {details}"
        else:
            cause = f"{type(exc).__name__}: {exc}"
        return BrokerUnavailable(f"{doing}: cannot reach the {self.where} ({cause})")

    def probe(self) -> None:
        """Fail fast: is the proxy there, and does it take our credentials?"""
        request = _proto.HeartbeatRequest(client_type=_proto.ClientType.Value("PRODUCER"))
        try:
            response = self._stub().Heartbeat(
                request, metadata=self._metadata(), timeout=self.connect_timeout
            )
        except grpc.RpcError as exc:
            raise self.unreachable(exc, "connecting") from None
        self._check_auth(response.status)

    def _check_auth(self, status: Any) -> None:
        if status.code in (Code.UNAUTHORIZED, Code.FORBIDDEN):
            raise BrokerUnavailable(
                f"the {self.where} refused the credentials "
                f"({Code.Name(status.code)}: {status.message}); check the access key and "
                "secret key in the URL (rocketmq://ACCESS_KEY:SECRET_KEY@host:port)"
            )

    def provision(self, kind: str, name: str) -> None:
        """With ``auto_create``, create the topic or consumer group ``name`` if it is missing.

        Done before the proxy is first asked about it: a proxy caches a missing topic's route
        for a while, so creating it after a failed lookup would not help at once.
        """
        if not self.auto_create or self.namesrv is None:
            return
        if kind == "group" and name in self._known_groups:
            return
        ensure = admin.ensure_topic if kind == "topic" else admin.ensure_group
        try:
            ensure(self.namesrv, name, timeout=self.connect_timeout)
        except (OSError, admin.AdminError) as exc:
            raise BrokerUnavailable(
                f"auto_create: cannot create {kind} {name!r} through the name server at "
                f"{self.namesrv}: {exc}"
            ) from None
        if kind == "group":
            self._known_groups.add(name)

    def start_at_end(self, group: str, topics: Sequence[str], mqkit_group: str) -> None:
        """With a name server to ask, position a group that is new in a topic at its end.

        A RocketMQ 5 broker positions a group in a queue at the group's first poll, not when
        it subscribes (see :func:`mqkit_rocketmq.admin.start_group_at_end`); mqkit promises
        every message sent after ``consumer()`` returned, and nothing from before.
        """
        if self.namesrv is None:
            return
        with self._position_lock:  # members of one group subscribing at once: one positions it
            for topic in topics:
                try:
                    admin.start_group_at_end(
                        self.namesrv, group, topic, timeout=self.connect_timeout
                    )
                except admin.GroupMissing as exc:
                    raise ConfigError(
                        f"consumer group {mqkit_group!r} does not exist on the RocketMQ cluster "
                        f"({exc}); create it, e.g. `mqadmin updateSubGroup -n NAMESRV:9876 -c "
                        f"DefaultCluster -g {group} -o true` (-o: FIFO, for per-key order), or "
                        "add auto_create=true for development clusters"
                    ) from None
                except (OSError, admin.AdminError) as exc:
                    raise BrokerUnavailable(
                        f"cannot position the new consumer group {mqkit_group!r} on topic "
                        f"{topic!r} through the name server at {self.namesrv}: {exc}"
                    ) from None

    def check_topic(self, topic: str, mqkit_name: str) -> None:
        """Raise a clear mqkit error unless ``topic`` exists on the cluster."""
        if topic in self._known_topics:
            return
        self.provision("topic", topic)
        request = _proto.QueryRouteRequest()
        request.topic.name = topic
        request.topic.resource_namespace = self.namespace
        request.endpoints.CopyFrom(self.config.rpc_endpoints.endpoints)
        try:
            response = self._stub().QueryRoute(
                request, metadata=self._metadata(), timeout=self.connect_timeout
            )
        except grpc.RpcError as exc:
            raise self.unreachable(exc, f"looking up topic {mqkit_name!r}") from None
        status = response.status
        self._check_auth(status)
        if status.code == Code.TOPIC_NOT_FOUND:
            raise ConfigError(self.missing_topic(topic, mqkit_name, status.message))
        if status.code in (Code.ILLEGAL_TOPIC, Code.BAD_REQUEST):
            raise ConfigError(
                f"the {self.where} refuses topic {topic!r} (for mqkit topic {mqkit_name!r}): "
                f"{status.message}"
            )
        if status.code != Code.OK:
            raise BrokerUnavailable(
                f"the {self.where} could not route topic {topic!r}: "
                f"{Code.Name(status.code)}: {status.message}"
            )
        self._known_topics.add(topic)

    def missing_topic(self, topic: str, mqkit_name: str, detail: str) -> str:
        named = f"{mqkit_name!r}" if topic == mqkit_name else f"{mqkit_name!r} ({topic!r})"
        detail = detail.strip().split("\n", 1)[0]  # a proxy adds a line with its FAQ link
        return (
            f"topic {named} does not exist on the {self.where} ({detail}); RocketMQ topics are "
            "created by an administrator, e.g. `mqadmin updateTopic -n NAMESRV:9876 -c "
            f"DefaultCluster -t {topic} -a +message.type=MIXED` (MIXED: mqkit sends keyed "
            "messages as FIFO and the others as NORMAL messages)"
        )

    def error(
        self, exc: BaseException, doing: str, topic: str = "", mqkit_name: str = ""
    ) -> MqkitError:
        """An mqkit error for what the official client raised."""
        if isinstance(exc, MqkitError):
            return exc
        if isinstance(exc, grpc.RpcError):
            return self.unreachable(exc, doing)
        if isinstance(exc, TimeoutError):
            return BrokerUnavailable(f"{doing}: the {self.where} did not answer in time")
        code = getattr(exc, "code", None)
        text = str(exc)
        if isinstance(exc, _exc.UnauthorizedException | _exc.ForbiddenException):
            return BrokerUnavailable(f"{doing}: the {self.where} refused us ({text})")
        if isinstance(exc, _exc.NotFoundException) and code == Code.TOPIC_NOT_FOUND and topic:
            return ConfigError(self.missing_topic(topic, mqkit_name or topic, text))
        if isinstance(exc, _exc.IllegalArgumentException) and "message type not match" in text:
            return ConfigError(
                f"{doing}: topic {topic!r} on the {self.where} does not accept this kind of "
                f"message ({text}); mqkit sends keyed messages as FIFO and unkeyed ones as "
                "NORMAL messages, so create the topic with -a +message.type=MIXED"
            )
        if isinstance(exc, _exc.BadRequestException) and code == Code.ILLEGAL_INVISIBLE_TIME:
            return ConfigError(f"{doing}: the {self.where} refuses visibility_timeout: {text}")
        if isinstance(
            exc,
            _exc.TooManyRequestsException
            | _exc.InternalErrorException
            | _exc.ProxyTimeoutException,
        ):
            return BrokerUnavailable(f"{doing}: the {self.where} failed: {text}")
        if "failed to fetch topic" in text and topic:
            # The client hides why; ask the proxy ourselves.
            try:
                self._known_topics.discard(topic)
                self.check_topic(topic, mqkit_name or topic)
            except MqkitError as diagnosed:
                return diagnosed
            return BrokerUnavailable(f"{doing}: {text}")
        return MqkitError(f"{doing} on the {self.where} failed: {type(exc).__name__}: {text}")

    # -- the Backend protocol --------------------------------------------------------------

    def producer(self, options: Mapping[str, Any]) -> V5Producer:
        self._check_open()
        opts = Options("rocketmq producer", options)
        max_in_flight = opts.int("max_in_flight", self.max_in_flight, minimum=1)
        opts.done()
        return V5Producer(self, max_in_flight=max_in_flight)

    def consumer(
        self, topics: Sequence[str], group: str, options: Mapping[str, Any]
    ) -> V5Consumer:
        self._check_open()
        opts = Options("rocketmq consumer", options)
        visibility = opts.int("visibility_timeout", self.visibility, minimum=1)
        prefetch = opts.int("prefetch", self.prefetch, minimum=1)
        polling = opts.int("long_polling_timeout", self.long_polling, minimum=1)
        opts.done()
        if prefetch > 32:
            raise ConfigError(f"rocketmq consumer: prefetch={prefetch}: RocketMQ pops at most 32")
        return V5Consumer(
            self, topics, group, visibility=visibility, prefetch=prefetch, long_polling=polling
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"broker {self.where} is closed")

    def close(self) -> None:
        self._closed = True
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


class V5Producer:
    """Asynchronous sends; messages of one key go one after the other, in order."""

    def __init__(self, backend: V5Backend, *, max_in_flight: int) -> None:
        self._backend = backend
        self._max_in_flight = max_in_flight
        self._client = _producer.Producer(backend.config, tls_enable=backend.tls)
        try:
            _start(self._client)
        except Exception as exc:
            raise backend.error(exc, "starting a producer") from None
        self._cv = threading.Condition()
        self._pending = 0
        self._errors: list[MqkitError] = []
        self._keyed: dict[str, deque[tuple[Any, str, str]]] = {}
        self._closed = False

    def send(self, message: OutgoingMessage) -> None:
        topic = _codec.rocketmq_name("topic", message.topic)
        self._backend.check_topic(topic, message.topic)
        encoded = _codec.encode(message)
        rmsg = _model.Message()
        rmsg.topic = topic
        rmsg.body = encoded.body
        rmsg.properties.update(encoded.properties)
        if encoded.keys:
            rmsg.keys = encoded.keys[0]
        if encoded.message_group is not None:
            rmsg.message_group = encoded.message_group
        with self._cv:
            if self._closed:
                raise ClosedError("producer is closed")
            while self._pending >= self._max_in_flight:
                self._cv.wait()
            self._pending += 1
            group = encoded.message_group
            if group is not None:
                queue = self._keyed.get(group)
                if queue is not None:  # a message of this key is on its way: go after it
                    queue.append((rmsg, topic, message.topic))
                    return
                self._keyed[group] = deque()
        self._launch(rmsg, topic, message.topic, raise_now=True)

    def _launch(
        self,
        rmsg: Any,
        topic: str,
        name: str,
        *,
        raise_now: bool = False,
        first: float | None = None,
    ) -> None:
        first = time.monotonic() if first is None else first
        try:
            future: Future[Any] = self._client.send_async(rmsg)
        except Exception as exc:
            error = self._backend.error(exc, f"sending to {name!r}", topic, name)
            self._finished(rmsg, error, record=not raise_now)
            if raise_now:
                raise error from None
            return
        future.add_done_callback(lambda f: self._done(f, rmsg, topic, name, first))

    def _done(self, future: Future[Any], rmsg: Any, topic: str, name: str, first: float) -> None:
        error = None
        exc = future.exception()
        if exc is not None:
            if (
                isinstance(exc, grpc.RpcError)
                and exc.code() == grpc.StatusCode.UNAVAILABLE
                and time.monotonic() - first < self._backend.connect_timeout
                and not self._closed
            ):
                # The proxy is restarting or the channel is reconnecting (the request never
                # left): try again shortly, keeping this key's later messages waiting.
                retry = threading.Timer(
                    0.25, self._launch, (rmsg, topic, name), {"first": first}
                )
                retry.daemon = True
                retry.start()
                return
            error = self._backend.error(exc, f"sending to {name!r}", topic, name)
        self._finished(rmsg, error, record=True)

    def _finished(self, rmsg: Any, error: MqkitError | None, *, record: bool) -> None:
        follow: tuple[Any, str, str] | None = None
        with self._cv:
            self._pending -= 1
            if error is not None and record:
                self._errors.append(error)
            group = rmsg.message_group
            if group is not None and group in self._keyed:
                queue = self._keyed[group]
                if queue:
                    follow = queue.popleft()
                else:
                    del self._keyed[group]
            self._cv.notify_all()
        if follow is not None:
            self._launch(*follow)

    def flush(self, timeout: float | None) -> None:
        with self._cv:
            done = self._cv.wait_for(lambda: self._pending == 0, timeout)
            if self._errors:
                errors, self._errors = self._errors, []
                if len(errors) > 1:
                    raise type(errors[0])(f"{errors[0]} (and {len(errors) - 1} more failed sends)")
                raise errors[0]
            if not done:
                raise DeliveryTimeout(
                    f"{self._pending} message(s) not yet confirmed by the "
                    f"{self._backend.where} after {timeout} s"
                )

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
        try:
            self.flush(None)
        finally:
            with self._cv:
                self._closed = True
            try:
                self._client.shutdown()
            except Exception as exc:  # the messages are confirmed; shutting down is best effort
                log.warning("RocketMQ producer shutdown: %s", exc)


class _PerMessage:
    """A number per message (group, topic, message id), shared by the consumers of one
    connection; bounded, oldest entries forgotten first. Three of them per connection:

    * ``unseen``: deliveries RocketMQ counted that the application never saw. RocketMQ counts
      every pop. A consumer that polls a batch and gives part of it back unseen (on close,
      behind a nacked message of the same key, or because it could not keep a buffered message
      invisible) would otherwise report ``attempt`` one too high when that message comes back.
    * ``handed``: the ``attempt`` a message had when the application gave it back (a nack, or
      a close while it was unsettled). In a FIFO group RocketMQ 5 reports as the attempt of a
      redelivered message the *lowest* count of its batch from that queue, so a nacked message
      that comes back in one batch with new messages would say attempt 1 again; it comes back
      with at least this + 1.
    * ``acked``: messages acked in FIFO groups. A FIFO group's position in a queue only moves
      past messages acked *in queue order*: when an earlier message of the queue goes back (a
      nack of another key, a close), RocketMQ delivers the later ones again even though they
      were acked. Such a message is acked again and not handed out.
    """

    LIMIT = 50_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: OrderedDict[tuple[str, str, str], int] = OrderedDict()

    def add(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._counts[key] = self._counts.pop(key, 0) + 1
            self._trim()

    def set(self, key: tuple[str, str, str], value: int) -> None:
        with self._lock:
            self._counts.pop(key, None)
            self._counts[key] = value
            self._trim()

    def _trim(self) -> None:
        if len(self._counts) > self.LIMIT:
            self._counts.popitem(last=False)

    def get(self, key: tuple[str, str, str]) -> int:
        if not self._counts:  # the usual case: nothing was ever recorded
            return 0
        with self._lock:
            return self._counts.get(key, 0)

    def discard(self, key: tuple[str, str, str]) -> None:
        if self._counts:
            with self._lock:
                self._counts.pop(key, None)


class _Held:
    """A received message and when its invisible time (last) started."""

    __slots__ = ("message", "since")

    def __init__(self, message: Any, since: float) -> None:
        self.message = message
        self.since = since


class V5Consumer:
    """A SimpleConsumer of ``group``; pops batches and hands them out one by one."""

    def __init__(
        self,
        backend: V5Backend,
        topics: Sequence[str],
        group: str,
        *,
        visibility: int,
        prefetch: int,
        long_polling: int,
    ) -> None:
        self._backend = backend
        self._unseen = backend.unseen
        self._handed = backend.handed
        self._acked = backend.acked
        self._group = _codec.rocketmq_name("group", group)
        self._mqkit_group = group
        self._names: dict[str, str] = {}
        for name in topics:
            topic = _codec.rocketmq_name("topic", name)
            backend.check_topic(topic, name)
            self._names[topic] = name
        self._visibility = visibility
        self._prefetch = prefetch
        # Batch size of the next poll: starts at 1 and doubles up to ``prefetch`` while the
        # application works through a batch in well under half the invisible duration.
        self._batch = 1
        self._landed_at = 0.0
        self._landed = 0
        self._cv = threading.Condition()
        self._buffer: deque[Delivery] = deque()
        self._inflight: dict[int, Delivery] = {}  # handed out, unsettled; by id(message)
        self._pending: Future[Any] | None = None
        self._error: MqkitError | None = None
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._closed = False
        self._warned_fifo = False
        backend.provision("group", self._group)
        filters = {topic: _model.FilterExpression() for topic in self._names}
        try:
            self._client = _SimpleConsumer(
                backend.config,
                self._group,
                filters,
                await_duration=long_polling,
                tls_enable=backend.tls,
            )
            _start(self._client)
        except MqkitError:
            raise
        except Exception as exc:
            raise backend.error(exc, f"starting consumer group {group!r}") from None
        # The subscription exists once the proxy has answered the client's settings.
        event = getattr(self._client, "_init_settings_event", None)
        if event is not None and not event.wait(backend.subscribe_timeout):
            self._client.shutdown()
            raise BrokerUnavailable(
                f"the {backend.where} did not confirm the subscription of group {group!r} "
                f"within {backend.subscribe_timeout} s (option subscribe_timeout)"
            )
        try:
            backend.start_at_end(self._group, list(self._names), group)
        except MqkitError:
            self._client.shutdown()
            raise
        if self._client.fifo:
            # A FIFO group's queue belongs to whoever popped from it until that batch is
            # settled: the messages behind a small first batch would wait for it anyway.
            self._batch = prefetch

    # -- receiving -------------------------------------------------------------------------

    def receive(self, timeout: float | None) -> Delivery | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            stale = self._next(deadline)
            if stale is None or isinstance(stale, Delivery):
                return stale
            # A buffered message whose invisible time is half gone: renew it before handing
            # it out, so the handler gets at least half the invisible duration (renewing does
            # not count as a delivery; giving it back would).
            delivery, held = stale
            renewed = self._renew(held)
            with self._cv:
                if renewed and not self._closed:
                    self._inflight[id(held.message)] = delivery
                    return delivery
            self._give_back([held.message])
            if self._closed:
                return None

    def _next(self, deadline: float | None) -> Delivery | tuple[Delivery, _Held] | None:
        """The next buffered delivery, or one that must be renewed first; polls as needed."""
        with self._cv:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                if self._buffer:
                    delivery = self._buffer.popleft()
                    held: _Held = delivery.handle
                    if now - held.since < self._visibility / 2:
                        self._inflight[id(held.message)] = delivery
                        return delivery
                    return delivery, held
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._pending is None and now >= self._retry_at:
                    self._start_poll(now)
                    continue
                waits: list[float] = []
                if deadline is not None:
                    if deadline <= now:
                        return None
                    waits.append(deadline - now)
                if self._pending is None:
                    waits.append(self._retry_at - now)
                self._cv.wait(min(waits) if waits else None)

    def _renew(self, held: _Held) -> bool:
        try:
            self._client.change_invisible_duration(held.message, self._visibility)
        except Exception as exc:  # its invisible time ran out: it is someone else's now
            log.info("could not renew buffered message %s: %s", held.message.message_id, exc)
            return False
        held.since = time.monotonic()
        return True

    def _start_poll(self, now: float) -> None:
        """Start one long poll (with the lock held, buffer empty); its batch lands in the buffer."""
        if self._failing_since is not None and now - self._retry_at > 1.0:
            # Nobody received for a while after the last failed poll: the time that passed
            # does not count against connect_timeout (a poll that failed while the proxy
            # restarted must not fail the first receive after it is back).
            self._failing_since = None
        if self._landed:
            # The application went through the last batch at this pace: grow the batch while
            # it would still be handed out within half the invisible duration.
            pace = (now - self._landed_at) / self._landed
            fits = int(self._visibility / 2 / pace) if pace > 0 else self._prefetch
            self._batch = max(1, min(self._prefetch, 2 * self._batch, fits))
            self._landed = 0
        # A consumer holding k unsettled messages (a worker pool) gets at least k + 1.
        batch = max(self._batch, min(self._prefetch, 1 + len(self._inflight)))
        try:
            future: Future[Any] = self._client.receive_async(batch, self._visibility)
        except Exception as exc:
            self._poll_failed(exc)
            return
        self._pending = future
        future.add_done_callback(self._polled)

    def _polled(self, future: Future[Any]) -> None:
        exc = future.exception()
        with self._cv:
            self._pending = None
            if exc is not None:
                self._poll_failed(exc)
                self._cv.notify_all()
                return
            self._failing_since = None
            messages = future.result() or []
            again = []
            if self._client.fifo:
                again = [m for m in messages if self._acked.get(self._key(m))]
                if again:
                    messages = [m for m in messages if not self._acked.get(self._key(m))]
            if self._closed:
                release = messages
            else:
                release = []
                now = time.monotonic()
                for message in messages:
                    self._buffer.append(self._delivery(message, now))
                if messages:
                    self._landed_at, self._landed = now, len(messages)
            self._cv.notify_all()
        self._give_back(release)  # closed meanwhile
        for message in again:  # acked before, delivered again by FIFO queue order: ack again
            log.debug("acking message %s again (acked before)", message.message_id)
            try:
                self._client.ack_async(message)
            except Exception as exc:  # it comes back, and is acked again then
                log.info("could not ack message %s again: %s", message.message_id, exc)

    def _poll_failed(self, exc: BaseException) -> None:
        error = self._backend.error(
            exc, f"receiving for group {self._mqkit_group!r}", *self._topic_hint()
        )
        now = time.monotonic()
        transient = isinstance(error, BrokerUnavailable)
        if transient:
            # The proxy may be back after a restart without our subscription.
            self._client.resend_settings()
        if transient and self._failing_since is None:
            self._failing_since = now
        if transient and now - (self._failing_since or now) < self._backend.connect_timeout:
            log.warning("RocketMQ receive failed, retrying: %s", error)
            self._retry_at = now + 0.5
            return
        self._failing_since = None
        self._retry_at = now + 0.5
        self._error = error

    def _topic_hint(self) -> tuple[str, str]:
        if len(self._names) == 1:
            topic, name = next(iter(self._names.items()))
            return topic, name
        return "", ""

    def _key(self, message: Any) -> tuple[str, str, str]:
        return (self._group, message.topic, message.message_id)

    def _delivery(self, message: Any, received_at: float) -> Delivery:
        decoded = _codec.decode(
            message.body,
            message.properties,
            message_group=message.message_group,
            keys=sorted(message.keys),
            message_id=message.message_id,
            born_ms=message.born_timestamp or 0,
        )
        if (
            decoded.key is not None
            and self._client.fifo is False
            and not self._warned_fifo
        ):
            self._warned_fifo = True
            log.warning(
                "consumer group %r is not FIFO on the %s: messages of one key may be "
                "processed out of order; make it FIFO with `mqadmin updateSubGroup -g %s -o true`",
                self._group,
                self._backend.where,
                self._group,
            )
        key = self._key(message)
        attempt = max(
            (message.delivery_attempt or 1) - self._unseen.get(key), self._handed.get(key) + 1
        )
        return Delivery(
            topic=self._names.get(message.topic, message.topic),
            body=decoded.body,
            key=decoded.key,
            headers=decoded.headers,
            id=decoded.id,
            timestamp=decoded.timestamp,
            attempt=max(1, attempt),
            handle=_Held(message, received_at),
        )

    # -- settling --------------------------------------------------------------------------

    def _settle(self, delivery: Delivery, what: str, call: Callable[[], None]) -> None:
        message = delivery.handle.message
        with self._cv:
            self._inflight.pop(id(message), None)
        try:
            self._call_reconnecting(call)
        except Exception as exc:
            if getattr(exc, "code", None) == Code.INVALID_RECEIPT_HANDLE:
                log.warning(
                    "%s of message %s on %r came after its invisible time ran out; it may be "
                    "delivered again (raise visibility_timeout for slow handlers)",
                    what,
                    delivery.id,
                    delivery.topic,
                )
                return
            raise self._backend.error(exc, f"{what} of message {delivery.id}") from None

    def _call_reconnecting(self, call: Callable[[], None]) -> None:
        """``call()``, retried for ``connect_timeout`` while the proxy cannot be connected to.

        A message handed out from the buffer is settled without a poll before it, so after the
        proxy restarts the settling call can be the first to meet the client's channel still
        reconnecting. "Cannot connect" means the request never reached the proxy: safe to
        repeat.
        """
        give_up = time.monotonic() + self._backend.connect_timeout
        while True:
            try:
                call()
                return
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= give_up:
                    raise
                log.info("RocketMQ proxy unavailable, retrying: %s", exc)
                time.sleep(0.2)

    def ack(self, delivery: Delivery) -> None:
        message = delivery.handle.message
        self._settle(delivery, "ack", lambda: self._client.ack(message))
        self._acked_now(message)

    def _acked_now(self, message: Any) -> None:
        key = self._key(message)
        self._unseen.discard(key)
        self._handed.discard(key)
        if self._client.fifo:
            self._acked.set(key, 1)

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        message = delivery.handle.message
        if not requeue:
            self._settle(delivery, "nack", lambda: self._client.ack(message))
            self._acked_now(message)
            return
        self._handed.set(self._key(message), delivery.attempt)
        later: list[Any] = []
        if message.message_group:
            # Buffered successors of the same key hold its message group: give them back so
            # the nacked message comes first again.
            with self._cv:
                keep: deque[Delivery] = deque()
                for d in self._buffer:
                    m = d.handle.message
                    if m.message_group == message.message_group and m.topic == message.topic:
                        later.append(m)
                    else:
                        keep.append(d)
                self._buffer = keep
        seconds = max(0, math.ceil(delay))
        self._settle(
            delivery,
            "nack",
            lambda: self._client.change_invisible_duration(message, seconds),
        )
        self._give_back(later)

    def _give_back(self, messages: Sequence[Any]) -> None:
        """Make messages the application never saw visible again (counting that delivery)."""
        for message in messages:
            self._unseen.add(self._key(message))
            self._release(message)

    def _release(self, message: Any) -> None:
        try:
            self._client.change_invisible_duration(message, 0)
        except Exception as exc:  # it comes back when its invisible time runs out instead
            log.info("could not give back message %s: %s", message.message_id, exc)

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            unseen = [d.handle.message for d in self._buffer]
            seen = list(self._inflight.values())
            self._buffer.clear()
            self._inflight.clear()
            pending = self._pending
            self._cv.notify_all()
        self._give_back(unseen)
        for delivery in seen:
            self._handed.set(self._key(delivery.handle.message), delivery.attempt)
            self._release(delivery.handle.message)
        if pending is None:
            self._shutdown()
            return
        # A long poll is still out. Shutting the client down would cancel the call, but the
        # proxy keeps the poll waiting on the broker: what it takes afterwards (such as the
        # messages just given back) cannot be written to us and stays invisible for the whole
        # visibility_timeout. So the poll runs out (at most long_polling_timeout), what it
        # brings is given back at once (see _polled), and then the client shuts down.
        pending.add_done_callback(
            lambda _: threading.Thread(
                target=self._shutdown, name="mqkit-rocketmq-close", daemon=True
            ).start()
        )

    def _shutdown(self) -> None:
        try:
            self._client.shutdown()
        except Exception as exc:
            log.warning("RocketMQ consumer shutdown: %s", exc)


def open_backend(url: BrokerURL, options: Mapping[str, Any]) -> V5Backend:
    return V5Backend(url, options)
