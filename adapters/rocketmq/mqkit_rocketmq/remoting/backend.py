"""``rocketmq+remoting://`` — RocketMQ through the name server and the remoting protocol
(RocketMQ 4.x, and 5.x brokers, which still speak it), with the native ``librocketmq``
(rocketmq-client-cpp) through ctypes.

The native library and which binding found it: :mod:`._native`.

Producer (:mod:`.producer`): each ``send`` is synchronous (confirmed by the broker, so ``flush``
has nothing to wait for); a keyed message goes to the queue its key hashes to.

Consumer (:mod:`.consumer`): an *orderly* clustering push consumer, with a client instance of
its own. It locks its queues on the broker, and its callback hands a message to ``receive()``
and waits until the application settles it; the queue's next message comes only then, so a
consumer holds at most one unsettled message per queue (``features.independent_keys`` is
false). ``ack()`` writes the queue's position to the broker before it returns; ``nack()`` hands
the message out again from this consumer after ``delay``, ``attempt`` + 1, ahead of the rest of
its queue (RocketMQ's orderly consumer retries locally as well, without counting); ``close()``
answers ``RECONSUME_LATER`` for what is not settled, so the group gets it again. librocketmq's
concurrent consumer cannot settle messages one by one, so ``orderly=false`` is refused.

Verified against Apache RocketMQ 5.3.3 (name server and broker) with the bundled
librocketmq 1.0.1: the conformance suite and ``tests/rocketmq/test_rocketmq_remoting.py``.
What that found, and what the adapter does about it, is in docs/rocketmq.md. The Apache 2.0.0
binding was not run against a broker: its native library is in no package registry here.

This module: the entry point, the connect probe, admin requests through the name servers and
what the consumers of one connection share.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from mqkit.adapter import BackendBase, BrokerURL, Features
from mqkit.adapter import Settings as BaseSettings
from mqkit.errors import (
    AuthenticationError,
    BrokerUnavailable,
    ConfigError,
    MqkitError,
    PermissionDenied,
)
from mqkit_rocketmq import admin
from mqkit_rocketmq.remoting._native import ENDPOINTS
from mqkit_rocketmq.remoting.consumer import LOCK_LIFETIME, Consumer
from mqkit_rocketmq.remoting.producer import MAX_BODY_SIZE, Producer
from mqkit_rocketmq.remoting.settings import Settings, name_servers

log = logging.getLogger("mqkit.rocketmq.remoting")

#: Queues of a topic that ``auto_create`` creates (``mqadmin updateTopic``'s default).
AUTO_CREATE_QUEUES = 8
#: Messages given back by closed consumers whose delivery count a backend remembers.
SEEN_LIMIT = 50_000


class Backend(BackendBase[Settings]):
    """The name servers of one RocketMQ cluster."""

    settings_type: ClassVar[type[BaseSettings]] = Settings

    @classmethod
    def check_url(cls, url: BrokerURL) -> None:
        name_servers(url)
        if url.username is not None and url.password is None:
            raise ConfigError(f"{url}: give both the access key and the secret key")

    def __init__(self, url: BrokerURL, settings: Settings) -> None:
        super().__init__(url, settings)
        self.addresses = name_servers(url)
        self.namesrv = ";".join(f"{h}:{p}" for h, p in self.addresses)
        #: How errors name the cluster: "the RocketMQ name server at host:port".
        self.server = f"RocketMQ name server at {', '.join(f'{h}:{p}' for h, p in self.addresses)}"
        self.credentials = (url.username, url.password or "") if url.username else None
        self.connect_timeout = settings.connect_timeout
        self.auto_create = settings.auto_create
        if not settings.orderly:
            raise ConfigError(
                f"{url}: orderly=false is not supported: librocketmq's concurrent push consumer "
                "hands a whole pulled batch (up to 32 messages) to one callback and settles it "
                "as a whole, so one nack, or a close, would send every message of the batch back "
                "through the retry topic, acked ones included"
            )
        if settings.tls or settings.tls_options_given():
            # The core's TLS options are declared for every adapter; this client has none.
            raise ConfigError(
                f"{url}: rocketmq+remoting:// cannot use TLS: librocketmq (rocketmq-client-cpp "
                "2.x) has no TLS; use rocketmq:// through a RocketMQ 5 proxy for TLS"
            )
        self.features = Features(
            key_order_on_nack=True,
            delayed_redelivery=True,
            persistent=True,
            max_body_size=MAX_BODY_SIZE,
            independent_keys=False,
            crash_hold=LOCK_LIFETIME,
            throwaway_group_options={"temporary": True},
        )
        self._lock = threading.Lock()
        self._created: set[str] = set()
        #: (group, topic, queue, offset) → deliveries the application saw of a message that a
        #: closed orderly consumer gave back: RocketMQ counts no local retries.
        self._seen: OrderedDict[tuple[str, str, int, int], int] = OrderedDict()
        self.probe()

    def probe(self) -> None:
        """Fail fast unless a name server answers a remoting request (``GET_BROKER_CLUSTER_INFO``).

        The native client would only log and retry for a long time (a send to a silent name
        server fails after about a minute).
        """
        errors = []
        for host, port in self.addresses:
            try:
                _ask_name_server(host, port, self.connect_timeout)
                self._remember_endpoints(f"{host}:{port}")
                return
            except (OSError, ValueError) as exc:
                errors.append(f"{host}:{port}: {exc}")
        raise BrokerUnavailable(f"cannot reach the {self.server} ({'; '.join(errors)})")

    def ping(self, timeout: float) -> None:
        """A name server request, as connect() makes (the remoting protocol has no login)."""
        self.probe()

    def _remember_endpoints(self, namesrv: str) -> None:
        """The name servers and brokers, whose connections librocketmq leaves open at exit
        (:func:`~mqkit_rocketmq.remoting._native._release_connections`)."""
        ENDPOINTS.update(self.addresses)
        try:
            brokers = admin.master_brokers(namesrv, timeout=self.connect_timeout)
        except (OSError, ValueError, admin.AdminError) as exc:
            log.debug("RocketMQ: listing the brokers of %s: %s", namesrv, exc)
            return
        for address in brokers.values():
            host, _, port = address.rpartition(":")
            # and the broker's VIP channel (port - 2), which librocketmq may use
            ENDPOINTS.update({(host, int(port)), (host, int(port) - 2)})

    def _refusal(self, topic: str) -> MqkitError | None:
        """Whether the broker refuses our credentials or rights on ``topic`` (one signed
        request per broker); the error saying so, else None."""

        def check(namesrv: str) -> None:
            for broker in admin.master_brokers(namesrv, timeout=self.connect_timeout).values():
                reply, _ = admin.call(
                    broker,
                    admin.GET_MAX_OFFSET,
                    {"topic": topic, "queueId": "0"},
                    timeout=self.connect_timeout,
                    credentials=self.credentials,
                )
                if reply["code"] == admin.NO_PERMISSION:
                    raise admin.AdminRefused(
                        f"topic {topic!r} on {broker}: code 16: {reply.get('remark')}"
                    )

        if not topic:
            return None
        try:
            self.admin(check, f"checking the credentials on topic {topic!r}")
        except (AuthenticationError, PermissionDenied) as exc:
            return exc
        except MqkitError:
            return None
        return None

    def error(self, exc: BaseException, doing: str) -> MqkitError:
        if isinstance(exc, MqkitError):
            return exc
        text = str(exc)
        if "No route info" in text and self.credentials is not None:
            # librocketmq says so too when the broker's ACL refused the request.
            refused = self._refusal(text.rsplit(":", 1)[-1].split()[0] if ":" in text else "")
            if refused is not None:
                return refused
        if "No route info" in text or "not exist" in text:
            return ConfigError(
                f"{doing} via the {self.server} failed: {text}; RocketMQ topics are created by "
                "an administrator (mqadmin updateTopic -n NAMESRV:9876 -c CLUSTER -t TOPIC), "
                "or let mqkit create them with the URL option auto_create=true"
            )
        return BrokerUnavailable(f"{doing} via the {self.server} failed: {text}")

    def admin(self, action: Callable[[str], Any], doing: str) -> Any:
        """Run an admin request against the first name server that answers."""
        errors = []
        for host, port in self.addresses:
            try:
                return action(f"{host}:{port}")
            except OSError as exc:
                errors.append(f"{host}:{port}: {exc}")
            except admin.AdminRefused as exc:
                if exc.denied:
                    raise PermissionDenied(
                        f"{doing} via the {self.server}: {exc}; the user needs an ACL for it "
                        "on the cluster"
                    ) from None
                raise AuthenticationError(
                    f"{doing} via the {self.server}: the broker refused the credentials: {exc}"
                ) from None
            except admin.AdminError as exc:
                raise BrokerUnavailable(f"{doing} via the {self.server}: {exc}") from None
        raise BrokerUnavailable(f"{doing}: cannot reach the {self.server} ({'; '.join(errors)})")

    def ensure_topic(self, topic: str, *, create: bool = False) -> None:
        """``auto_create`` (or ``create``): create ``topic`` (a RocketMQ name) unless this
        backend did already."""
        if not (self.auto_create or create) or topic in self._created:
            return
        with self._lock:
            if topic in self._created:
                return
            self.admin(
                lambda ns: admin.ensure_topic(
                    ns,
                    topic,
                    queues=AUTO_CREATE_QUEUES,
                    timeout=self.connect_timeout,
                    credentials=self.credentials,
                ),
                f"creating topic {topic!r}",
            )
            self._created.add(topic)

    def delete_temporary(self, group: str, topics: list[str]) -> None:
        """Delete a temporary consumer's group and topics (best effort: what remains is
        harmless, and the names are random)."""
        timeout = self.connect_timeout
        signed = self.credentials
        try:
            self.admin(
                lambda ns: admin.delete_group(ns, group, timeout=timeout, credentials=signed),
                f"deleting group {group!r}",
            )
            for topic in topics:
                self.admin(
                    lambda ns, t=topic: admin.delete_topic(  # type: ignore[misc]
                        ns, t, timeout=timeout, credentials=signed
                    ),
                    f"deleting topic {topic!r}",
                )
                with self._lock:
                    self._created.discard(topic)
        except MqkitError as exc:
            log.warning("RocketMQ: deleting temporary group %r and its topics: %s", group, exc)

    def remember_seen(self, key: tuple[str, str, int, int], deliveries: int) -> None:
        with self._lock:
            self._seen[key] = deliveries
            self._seen.move_to_end(key)
            while len(self._seen) > SEEN_LIMIT:
                self._seen.popitem(last=False)

    def seen_before(self, key: tuple[str, str, int, int]) -> int:
        with self._lock:
            return self._seen.pop(key, 0)

    def open_producer(self, settings: Settings) -> Producer:
        return Producer(self)

    def open_consumer(self, topics: tuple[str, ...], group: str, settings: Settings) -> Consumer:
        return Consumer(
            self, topics, group, prefetch=settings.prefetch, temporary=settings.temporary
        )


def _ask_name_server(host: str, port: int, timeout: float) -> None:
    """One remoting round trip: request code 106, expect a response frame."""
    header = json.dumps(
        {
            "code": 106,  # GET_BROKER_CLUSTER_INFO
            "extFields": {},
            "flag": 0,
            "language": "PYTHON",
            "opaque": 1,
            "serializeTypeCurrentRPC": "JSON",
            "version": 0,
        }
    ).encode()
    frame = (4 + len(header)).to_bytes(4, "big") + len(header).to_bytes(4, "big") + header
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame)

        def read(count: int) -> bytes:
            data = b""
            while len(data) < count:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(count - len(data))
                except TimeoutError:
                    raise TimeoutError(
                        f"accepted the connection but did not answer within {timeout} s"
                    ) from None
                if not chunk:
                    raise ConnectionError("closed the connection without answering")
                data += chunk
            return data

        length = int.from_bytes(read(4), "big")
        if not 4 <= length <= 16 << 20:
            raise ValueError(f"answered with a frame of {length} bytes: not a RocketMQ name server")
        body = read(length)
        header_length = int.from_bytes(body[:4], "big") & 0xFFFFFF
        reply = json.loads(body[4 : 4 + header_length] or b"{}")
        if not isinstance(reply, dict) or "code" not in reply:
            raise ValueError("answered something that is not a RocketMQ remoting response")


#: The ``mqkit.adapters`` entry point of ``rocketmq+remoting://``.
open_backend = Backend.open
