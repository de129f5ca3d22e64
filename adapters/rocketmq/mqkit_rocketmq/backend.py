"""``rocketmq://`` — RocketMQ 5.x through its gRPC proxy, with Apache's ``rocketmq-python-client``.

Mapping (see docs/rocketmq.md): a producer is one client ``Producer``; a consumer is one
``SimpleConsumer`` of the consumer group (each group gets every message, members compete).
Keys are message groups (FIFO messages), so per-key order holds in consumer groups that are FIFO
on the cluster. With ``namesrv``, a consumer group new to a topic is positioned at the topic's
end when it subscribes (RocketMQ would position it at its first poll); with ``auto_create``,
missing topics and groups are created (:mod:`mqkit_rocketmq.admin`).

The backend probes the proxy at connect, checks topics before first use and turns the client's
errors into mqkit's; :mod:`.producer` and :mod:`.consumer` are the hot paths.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc  # type: ignore[import-untyped,unused-ignore]

from mqkit.adapter import BackendBase, BrokerURL, Features
from mqkit.adapter import Settings as BaseSettings
from mqkit.errors import (
    AuthenticationError,
    BrokerUnavailable,
    ConfigError,
    MqkitError,
    PermissionDenied,
    TLSError,
)
from mqkit.security import client_context
from mqkit_rocketmq import admin
from mqkit_rocketmq._grpc import Code, client, proto, use_tls, util
from mqkit_rocketmq._grpc import exceptions as failed
from mqkit_rocketmq.consumer import Consumer, PerMessage
from mqkit_rocketmq.producer import Producer, no_writable_queue
from mqkit_rocketmq.settings import Settings, check_prefetch, endpoints

log = logging.getLogger("mqkit.rocketmq")

#: ``MessageType`` numbers of the 5.x protocol.
NORMAL_TYPE, FIFO_TYPE = 1, 2


class Backend(BackendBase[Settings]):
    """One RocketMQ 5 proxy endpoint (a list of proxies behind one access point)."""

    settings_type: ClassVar[type[BaseSettings]] = Settings

    @classmethod
    def check_url(cls, url: BrokerURL) -> None:
        endpoints(url)
        if url.username is not None and url.password is None:
            raise ConfigError(
                f"{url}: give both the access key and the secret key "
                "(rocketmq://ACCESS_KEY:SECRET_KEY@host:port)"
            )
        if "/" in url.path.strip("/"):
            raise ConfigError(f"{url}: the path is the namespace and cannot contain '/'")

    def __init__(self, url: BrokerURL, settings: Settings) -> None:
        super().__init__(url, settings)
        addresses = endpoints(url)
        self.endpoint = ";".join(addresses)
        #: How errors name the proxy: "the RocketMQ proxy at host:port".
        self.server = f"RocketMQ proxy at {', '.join(addresses)}"
        self.namespace = url.path.strip("/")
        self.connect_timeout = settings.connect_timeout
        #: Signs the admin requests to the brokers (needed on a cluster with ACL).
        self.credentials = (url.username, url.password or "") if url.username else None
        self.namesrv = settings.namesrv or None
        self.auto_create = settings.auto_create
        if self.auto_create and self.namesrv is None:
            raise ConfigError(
                f"{url}: auto_create creates topics through a name server: add "
                "namesrv=HOST:9876 (a RocketMQ 5 proxy cannot create topics itself)"
            )
        check_prefetch(str(url), settings.prefetch)
        self.config = client.ClientConfiguration(
            self.endpoint,
            client.Credentials(url.username or "", url.password or ""),
            namespace=self.namespace,
            request_timeout=settings.request_timeout,
        )
        if self.config.rpc_endpoints.facade == "":
            raise ConfigError(f"{url}: cannot make an endpoint of {self.endpoint!r}")
        if settings.tls_options_given() and not settings.tls:
            raise ConfigError(
                f"{self.where}: ca_file, cert_file, key_file and tls_insecure_skip_verify need "
                "tls=true"
            )
        #: gRPC TLS credentials (CA, client certificate), None without ``tls``.
        self.tls_credentials = tls_credentials(settings, self.where) if settings.tls else None
        if self.tls_credentials is not None:
            for target in {self.config.rpc_endpoints.facade, *addresses}:
                use_tls(target, self.tls_credentials)
        self.features = Features(
            key_order_on_nack=True,
            delayed_redelivery=True,
            persistent=True,
            max_body_size=4 << 20,  # a broker's default maxMessageSize
            # A reply inbox's topic and group are made for it and deleted after it: needs
            # the name server (a proxy creates and deletes nothing).
            throwaway_group_options={"temporary": True} if self.namesrv else {},
        )
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._known_topics: set[str] = set()
        #: Topics whose queues take FIFO messages only (made with message.type=FIFO).
        self.fifo_topics: set[str] = set()
        self._known_groups: set[str] = set()
        self._position_lock = threading.Lock()
        self.unseen = PerMessage()
        self.handed = PerMessage()
        self.acked = PerMessage()
        self._probe_id = f"mqkit-probe-{os.getpid()}-{id(self):x}"
        self.probe()

    def open_producer(self, settings: Settings) -> Producer:
        return Producer(self, max_in_flight=settings.max_in_flight)

    def open_consumer(self, topics: tuple[str, ...], group: str, settings: Settings) -> Consumer:
        check_prefetch("rocketmq consumer", settings.prefetch)
        if settings.temporary and self.namesrv is None:
            raise ConfigError(
                f"{self.where}: temporary=true creates and deletes the group's topic and group "
                "through a name server: add namesrv=HOST:9876"
            )
        return Consumer(self, topics, group, settings)

    def _close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    # -- talking to the proxy directly, to tell failures apart ------------------------------

    def _stub(self) -> Any:
        with self._lock:
            if self._channel is None:
                facade = self.config.rpc_endpoints.facade
                if self.tls_credentials is not None:
                    self._channel = grpc.secure_channel(facade, self.tls_credentials)
                else:
                    self._channel = grpc.insecure_channel(facade)
            return proto.MessagingServiceStub(self._channel)

    def _metadata(self) -> Any:
        return util.Signature.metadata(self.config, self._probe_id)

    def unreachable(self, exc: BaseException, doing: str) -> BrokerUnavailable:
        if isinstance(exc, grpc.RpcError):
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            tls = grpc_tls_failure(str(details), self.settings.tls)
            if tls:
                return TLSError(f"{doing}: TLS with the {self.server} failed: {tls}")
            cause = f"{code.name if code else 'error'}: {details}"
        else:
            cause = f"{type(exc).__name__}: {exc}"
        return BrokerUnavailable(f"{doing}: cannot reach the {self.server} ({cause})")

    def probe(self) -> None:
        """Fail fast: is the proxy there, and does it take our credentials?"""
        request = proto.HeartbeatRequest(client_type=proto.ClientType.Value("PRODUCER"))
        try:
            response = self._stub().Heartbeat(
                request, metadata=self._metadata(), timeout=self.connect_timeout
            )
        except grpc.RpcError as exc:
            raise self.unreachable(exc, "connecting") from None
        self._check_auth(response.status)

    def ping(self, timeout: float) -> None:
        """A heartbeat to the proxy, which checks the credentials (as connect() does)."""
        self.probe()

    def _check_auth(self, status: Any, doing: str = "connecting") -> None:
        # ACL 2.0 answers UNAUTHORIZED both to unknown credentials and to a known user
        # without the right ("... has no permission to access Topic:x ...").
        if status.code == Code.UNAUTHORIZED and "no permission" in status.message:
            raise PermissionDenied(
                f"{doing}: the {self.server} does not allow it ({status.message}); the user "
                "needs an ACL for it on the cluster"
            )
        if status.code == Code.UNAUTHORIZED:
            raise AuthenticationError(
                f"{doing}: the {self.server} refused the credentials "
                f"({Code.Name(status.code)}: {status.message}); check the access key and "
                "secret key (rocketmq://ACCESS_KEY:SECRET_KEY@host:port, password_file= or "
                "MQKIT_USERNAME/MQKIT_PASSWORD)"
            )
        if status.code == Code.FORBIDDEN:
            raise PermissionDenied(
                f"{doing}: the {self.server} does not allow it ({Code.Name(status.code)}: "
                f"{status.message}); the user needs an ACL for it on the cluster"
            )

    def provision(self, kind: str, name: str, *, create: bool = False) -> None:
        """With ``auto_create`` (or ``create``), create the topic or consumer group ``name`` if
        it is missing.

        Done before the proxy is first asked about it: a proxy caches a missing topic's route
        for a while, so creating it after a failed lookup would not help at once.
        """
        if not (self.auto_create or create) or self.namesrv is None:
            return
        if kind == "group" and name in self._known_groups:
            return
        ensure = admin.ensure_topic if kind == "topic" else admin.ensure_group
        try:
            ensure(
                self.namesrv, name, timeout=self.connect_timeout, credentials=self.credentials
            )
        except (OSError, admin.AdminError) as exc:
            doing = f"auto_create: cannot create {kind} {name!r} through the name server at "
            raise refused(exc, doing + self.namesrv) or BrokerUnavailable(
                f"{doing}{self.namesrv}: {exc}"
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
                        self.namesrv,
                        group,
                        topic,
                        timeout=self.connect_timeout,
                        credentials=self.credentials,
                    )
                except admin.GroupMissing as exc:
                    raise ConfigError(
                        f"consumer group {mqkit_group!r} does not exist on the RocketMQ cluster "
                        f"({exc}); create it, e.g. `mqadmin updateSubGroup -n NAMESRV:9876 -c "
                        f"DefaultCluster -g {group} -o true` (-o: FIFO, for per-key order), or "
                        "add auto_create=true for development clusters"
                    ) from None
                except (OSError, admin.AdminError) as exc:
                    doing = (
                        f"cannot position the new consumer group {mqkit_group!r} on topic "
                        f"{topic!r} through the name server at {self.namesrv}"
                    )
                    raise refused(exc, doing) or BrokerUnavailable(f"{doing}: {exc}") from None

    def check_topic(self, topic: str, mqkit_name: str, *, create: bool = False) -> None:
        """Raise a clear mqkit error unless ``topic`` exists on the cluster (``create``: make
        it first if it is missing, as ``auto_create`` does)."""
        if topic in self._known_topics:
            return
        self.provision("topic", topic, create=create)
        request = proto.QueryRouteRequest()
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
        self._check_auth(status, f"looking up topic {mqkit_name!r}")
        if status.code == Code.TOPIC_NOT_FOUND:
            raise ConfigError(self.missing_topic(topic, mqkit_name, status.message))
        if status.code in (Code.ILLEGAL_TOPIC, Code.BAD_REQUEST):
            raise ConfigError(
                f"the {self.server} refuses topic {topic!r} (for mqkit topic {mqkit_name!r}): "
                f"{status.message}"
            )
        if status.code != Code.OK:
            raise BrokerUnavailable(
                f"the {self.server} could not route topic {topic!r}: "
                f"{Code.Name(status.code)}: {status.message}"
            )
        accepted = {t for queue in response.message_queues for t in queue.accept_message_types}
        if FIFO_TYPE in accepted and NORMAL_TYPE not in accepted:
            self.fifo_topics.add(topic)
        self._known_topics.add(topic)

    def delete_temporary(self, group: str, topics: Sequence[str]) -> None:
        """Delete a temporary consumer's group and topics (best effort: what remains is
        harmless, and a later run of the same name cannot happen: the names are random)."""
        if self.namesrv is None:
            return
        try:
            timeout, signed = self.connect_timeout, self.credentials
            admin.delete_group(self.namesrv, group, timeout=timeout, credentials=signed)
            for topic in topics:
                admin.delete_topic(self.namesrv, topic, timeout=timeout, credentials=signed)
                self._known_topics.discard(topic)
        except (OSError, admin.AdminError) as exc:
            log.warning("RocketMQ: deleting temporary group %r and its topics: %s", group, exc)
        self._known_groups.discard(group)

    def missing_topic(self, topic: str, mqkit_name: str, detail: str) -> str:
        named = f"{mqkit_name!r}" if topic == mqkit_name else f"{mqkit_name!r} ({topic!r})"
        detail = detail.strip().split("\n", 1)[0]  # a proxy adds a line with its FAQ link
        return (
            f"topic {named} does not exist on the {self.server} ({detail}); RocketMQ topics are "
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
            return BrokerUnavailable(f"{doing}: the {self.server} did not answer in time")
        code = getattr(exc, "code", None)
        text = str(exc)
        if no_writable_queue(exc):
            about = f" of topic {topic!r}" if topic else ""
            return BrokerUnavailable(
                f"{doing}: no queue{about} takes writes on the {self.server} now (its broker "
                "group has no primary: one stopping or failing over); try again later"
            )
        if isinstance(exc, failed.UnauthorizedException) and "no permission" in text:
            return PermissionDenied(
                f"{doing}: the {self.server} does not allow it ({text}); the user needs an ACL "
                "for it on the cluster"
            )
        if isinstance(exc, failed.UnauthorizedException):
            return AuthenticationError(
                f"{doing}: the {self.server} refused the credentials ({text})"
            )
        if isinstance(exc, failed.ForbiddenException):
            return PermissionDenied(
                f"{doing}: the {self.server} does not allow it ({text}); the user needs an ACL "
                "for it on the cluster"
            )
        if isinstance(exc, failed.NotFoundException) and code == Code.TOPIC_NOT_FOUND and topic:
            return ConfigError(self.missing_topic(topic, mqkit_name or topic, text))
        if isinstance(exc, failed.IllegalArgumentException) and "message type not match" in text:
            return ConfigError(
                f"{doing}: topic {topic!r} on the {self.server} does not accept this kind of "
                f"message ({text}); mqkit sends keyed messages as FIFO and unkeyed ones as "
                "NORMAL messages, so create the topic with -a +message.type=MIXED"
            )
        if isinstance(exc, failed.BadRequestException) and code == Code.ILLEGAL_INVISIBLE_TIME:
            return ConfigError(f"{doing}: the {self.server} refuses visibility_timeout: {text}")
        if isinstance(
            exc,
            failed.TooManyRequestsException
            | failed.InternalErrorException
            | failed.ProxyTimeoutException,
        ):
            return BrokerUnavailable(f"{doing}: the {self.server} failed: {text}")
        if "failed to fetch topic" in text and topic:
            # The client hides why; ask the proxy ourselves.
            try:
                self._known_topics.discard(topic)
                self.check_topic(topic, mqkit_name or topic)
            except MqkitError as diagnosed:
                return diagnosed
            return BrokerUnavailable(f"{doing}: {text}")
        return MqkitError(f"{doing} on the {self.server} failed: {type(exc).__name__}: {text}")


def refused(exc: BaseException, doing: str) -> MqkitError | None:
    """The mqkit error of an admin request the cluster's ACL refused, else None."""
    if not isinstance(exc, admin.AdminRefused):
        return None
    if exc.denied:
        return PermissionDenied(f"{doing}: {exc}; the user needs an ACL for it on the cluster")
    return AuthenticationError(f"{doing}: the broker refused the credentials: {exc}")


def tls_credentials(settings: Settings, where: str) -> Any:
    """gRPC channel credentials of the TLS options: ``ca_file`` (else the system's CAs) and the
    client certificate. gRPC always checks the certificate and the host name."""
    if settings.tls_insecure_skip_verify:
        raise ConfigError(
            f"{where}: tls_insecure_skip_verify is not possible with rocketmq://: gRPC always "
            "verifies the proxy's certificate; give its CA with ca_file="
        )
    client_context(settings, where)  # checks the files as every adapter does
    paths = {name: getattr(settings, name) for name in ("ca_file", "cert_file", "key_file")}
    data = {name: Path(path).read_bytes() if path else None for name, path in paths.items()}
    return grpc.ssl_channel_credentials(
        root_certificates=data["ca_file"],
        private_key=data["key_file"] or data["cert_file"],
        certificate_chain=data["cert_file"],
    )


#: What gRPC's TLS failures say (in the status details), and what it means.
_GRPC_TLS = (
    ("WRONG_VERSION_NUMBER", "the port does not speak TLS (a plaintext port?): leave tls out"),
    ("certificate has expired", "the proxy's certificate has expired (or the clock is wrong)"),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the proxy's certificate is not signed by a CA in ca_file= "
        "(or the system's CAs without it), or has expired",
    ),
    (
        "not in peer certificate",
        "the proxy's certificate does not name the host connected to; connect by a name it holds",
    ),
    (
        "Peer name",
        "the proxy's certificate does not name the host connected to; connect by a name it holds",
    ),
    (
        "Hostname Verification",
        "the proxy's certificate does not name the host connected to; connect by a name it holds",
    ),
    (
        "Handshake read failed",
        "the server closed the connection during the TLS handshake (a plaintext port?)",
    ),
    (
        "Ssl handshake failed",
        "the TLS handshake failed (a plaintext port, or a certificate "
        "the proxy or the client refused)",
    ),
)


def grpc_tls_failure(details: str, tls: bool) -> str | None:
    """What a gRPC failure's details say about TLS, in words; None if not a TLS failure."""
    if not tls:
        return None
    for needle, meaning in _GRPC_TLS:
        if needle in details:
            return f"{meaning} ({details.strip().splitlines()[-1][-200:]})"
    return None


#: The ``mqkit.adapters`` entry point of ``rocketmq://``.
open_backend = Backend.open
