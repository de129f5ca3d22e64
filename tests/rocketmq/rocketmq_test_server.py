#!/usr/bin/env python3
"""A RocketMQ 5 *test server*: the gRPC ``apache.rocketmq.v2.MessagingService`` in one process.

This is NOT a RocketMQ broker. The test suite runs against real Apache RocketMQ 5
(``adapters/rocketmq/ci/broker``); this server remains for what that CI cluster does not show: a
proxy with ACLs (``tests/rocketmq/test_rocketmq_errors.py``, bad credentials). It speaks the wire
protocol from the protobuf definitions the official client ships (``rocketmq.grpc_protocol``) and
models the behaviour of a RocketMQ 5 proxy in front of one broker, following the proxy's own code
(``proxy/grpc/v2`` in apache/rocketmq) — more loosely than the real thing: see
docs/rocketmq.md for what real RocketMQ does differently (FIFO holds whole queues, new groups are
positioned at their first poll, a redelivered FIFO message's attempt is its batch's lowest):

* QueryRoute, Heartbeat, SendMessage, ReceiveMessage (server streaming, long polling),
  AckMessage, ChangeInvisibleDuration, QueryAssignment, NotifyClientTermination and the
  bidirectional Telemetry stream (settings handshake).
* Topics must exist: an unknown topic answers ``TOPIC_NOT_FOUND`` ("No topic route info in name
  server for the topic: …") like a proxy whose broker has ``autoCreateTopicEnable=false``.
  Topics are created with ``--topic NAME[:TYPE]``; ``--auto-create-topics`` creates MIXED topics
  on first use (a test convenience, like running ``mqadmin updateTopic … -a
  +message.type=MIXED`` before each test).
* Consumer groups are created on first use (RocketMQ's ``autoCreateSubscriptionGroup``), as
  concurrent groups unless ``--fifo-groups`` (``mqadmin updateSubGroup -o true``). Every group
  gets every message of its topics; members of a group compete.
* Pop semantics: a received message gets a receipt handle and stays invisible for the requested
  invisible duration (at least ``--min-invisible-time``, 10 s like the proxy default); not acked
  in time it becomes visible again with ``delivery_attempt`` + 1. Acking or changing the
  invisible duration with an expired or superseded handle answers ``INVALID_RECEIPT_HANDLE``.
* FIFO: in a FIFO group, a message group (``message_group``) is not delivered further while one
  of its messages is in flight or invisible for that group, so per-group order holds across
  redelivery. (A real broker locks the whole queue the group hashes to, which is stricter.)
* After ``retry_max_times + 1`` deliveries (16 + 1 by default) a message goes to the group's
  dead-letter topic ``%DLQ%<group>``.
* ``--acl AK:SK`` turns on authentication: requests must carry the client's HMAC-SHA1 signature
  or they answer ``UNAUTHORIZED``.
* ``--data-dir`` keeps topics, messages, acks and delivery counts in an append-only journal, so
  the test server can be restarted without losing messages. Leases are not kept: after a
  restart every unacked message is visible again.

Run it with the Python that has ``rocketmq-python-client`` installed::

    python tests/rocketmq/rocketmq_test_server.py --port 0 --port-file PORTFILE --auto-create-topics

It lives under ``tests/`` on purpose: it is not part of any installed mqkit package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import logging
import pickle
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import grpc  # type: ignore[import-untyped,unused-ignore]
from rocketmq.grpc_protocol import definition_pb2 as pb  # type: ignore[import-untyped,unused-ignore]
from rocketmq.grpc_protocol import service_pb2 as svc  # type: ignore[import-untyped,unused-ignore]
from rocketmq.grpc_protocol import (  # type: ignore[import-untyped,unused-ignore]
    service_pb2_grpc as svc_grpc,
)

log = logging.getLogger("rocketmq-test-server")

Code = pb.Code
BROKER_NAME = "test-server-broker-0"
QUEUE_NUMS = 8
MAX_BODY_SIZE = 4 * 1024 * 1024
MAX_USER_PROPERTY_SIZE = 16 * 1024
MAX_USER_PROPERTIES = 128
MAX_MESSAGE_GROUP_SIZE = 64
MAX_INVISIBLE_MS = 12 * 3600 * 1000
TOPIC_MAX_LENGTH = 127
GROUP_MAX_LENGTH = 120
_NAME = re.compile(r"^[%|a-zA-Z0-9_-]+$")
TOPIC_TYPES = ("NORMAL", "FIFO", "DELAY", "TRANSACTION", "MIXED")
_ACCEPT = {
    "NORMAL": [pb.NORMAL],
    "FIFO": [pb.FIFO],
    "DELAY": [pb.DELAY],
    "TRANSACTION": [pb.TRANSACTION],
    "MIXED": [pb.NORMAL, pb.FIFO, pb.DELAY, pb.TRANSACTION],
}
SYSTEM_TOPICS = {
    "TBW102", "SCHEDULE_TOPIC_XXXX", "BenchmarkTest", "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRACE_TOPIC", "RMQ_SYS_TRANS_OP_HALF_TOPIC", "TRANS_CHECK_MAX_TIME_TOPIC",
    "SELF_TEST_TOPIC", "OFFSET_MOVED_EVENT", "CHECKPOINT_TOPIC",
}
SYSTEM_GROUPS = {
    "TOOLS_CONSUMER", "FILTERSRV_CONSUMER", "__MONITOR_CONSUMER", "CLIENT_INNER_PRODUCER",
    "SELF_TEST_P_GROUP", "SELF_TEST_C_GROUP", "CID_ONS-HTTP-PROXY", "CID_ONSAPI_PERMISSION",
    "CID_ONSAPI_OWNER", "CID_ONSAPI_PULL", "DEFAULT_CONSUMER", "DEFAULT_PRODUCER",
}
#: ``MessageConst.STRING_HASH_SET``: property names reserved by RocketMQ itself.
SYSTEM_PROPERTIES = frozenset({
    "1ST_POP_TIME", "ARRIVE_TIME", "BORN_TIMESTAMP", "BUYER_ID", "CLUSTER", "CONSUME_START_TIME",
    "CORRECTION_FLAG", "CORRELATION_ID", "DELAY", "DLQ_ORIGIN_MESSAGE_ID", "DLQ_ORIGIN_TOPIC",
    "DUP_INFO", "EXTEND_UNIQ_INFO", "INNER_MULTI_QUEUE_OFFSET", "INSTANCE_ID", "KEYS",
    "MAX_OFFSET", "MAX_RECONSUME_TIMES", "MIN_OFFSET", "MQ2_FLAG", "MSG_REGION", "MSG_TYPE",
    "ORIGIN_MESSAGE_ID", "PGROUP", "POP_CK", "POP_CK_OFFSET", "PUSH_REPLY_TIME", "REAL_QID",
    "REAL_TOPIC", "RECONSUME_TIME", "REPLY_TO_CLIENT", "RETRY_TOPIC", "TAGS",
    "TIMER_DELAY_LEVEL", "TIMER_DELAY_MS", "TIMER_DELAY_SEC", "TIMER_DELIVER_MS",
    "TIMER_DEL_UNIQKEY", "TIMER_DEQUEUE_MS", "TIMER_ENQUEUE_MS", "TIMER_OUT_MS",
    "TIMER_ROLL_TIMES", "TRACE_ON", "TRANSFER_FLAG", "TRAN_MSG", "TRAN_PREPARED_QUEUE_OFFSET",
    "TTL", "UNIQ_KEY", "WAIT", "__BORNHOST", "__CRC32#",
})
#: The proxy stores the message group as this property and, as it is not in the reserved set,
#: hands it back among the user properties of a received FIFO message. So do we.
SHARDING_KEY = "__SHARDINGKEY"
#: Default retry schedule of a subscription group (``CustomizedRetryPolicy``), in seconds.
RETRY_SCHEDULE = (1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800,
                  3600, 7200)


class ProxyError(Exception):
    """An error answered in the response's ``status`` (the proxy's ``GrpcProxyException``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status(code: int, message: str | None = None) -> pb.Status:
    return pb.Status(code=code, message=message if message is not None else Code.Name(code))


def now_ms() -> int:
    return int(time.time() * 1000)


def has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


# -- state --------------------------------------------------------------------------------------


@dataclass
class Stored:
    offset: int
    queue_id: int
    message_id: str
    body: bytes
    user_properties: dict[str, str]
    tag: str | None
    keys: list[str]
    message_group: str | None
    message_type: int
    born_ms: int
    born_host: str
    store_ms: int
    deliver_at_ms: int = 0
    dlq_origin: tuple[str, str] | None = None


@dataclass
class Topic:
    name: str
    kind: str
    log: list[Stored] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class GroupConfig:
    name: str
    fifo: bool
    retry_max_times: int


@dataclass
class Lease:
    handle: str
    deadline_ms: int


@dataclass
class Cursor:
    """One consumer group's progress on one topic."""

    group: str
    topic: str
    start: int
    low: int = 0  # every offset below is done (acked or dead-lettered)
    done: set[int] = field(default_factory=set)
    leases: dict[int, Lease] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.low = max(self.low, self.start)

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        self.leases.pop(offset, None)
        self.attempts.pop(offset, None)
        while self.low in self.done:
            self.done.discard(self.low)
            self.low += 1


@dataclass
class ClientInfo:
    client_id: str
    settings: pb.Settings


class Journal:
    """Append-only pickle records; replayed at start so a restart keeps the data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO | None = None

    def replay(self) -> Iterable[tuple[Any, ...]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            while True:
                try:
                    yield pickle.load(fh)
                except EOFError:
                    return
                except (pickle.UnpicklingError, ValueError):  # torn last record after a kill
                    log.warning("journal %s: ignoring a torn record at its end", self.path)
                    return

    def write(self, *record: Any) -> None:
        if self._fh is None:
            self._fh = self.path.open("ab")
        pickle.dump(record, self._fh, protocol=pickle.HIGHEST_PROTOCOL)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topics: dict[str, Topic] = {}
        self.groups: dict[str, GroupConfig] = {}
        self.cursors: dict[tuple[str, str], Cursor] = {}
        self.handles: dict[str, tuple[Cursor, int]] = {}
        self.clients: dict[str, ClientInfo] = {}
        self.journal: Journal | None = None
        if args.data_dir:
            Path(args.data_dir).mkdir(parents=True, exist_ok=True)
            self.journal = Journal(Path(args.data_dir) / "journal.pickle")
            self._replay()
        for spec in args.topic or []:
            name, _, kind = spec.partition(":")
            self.create_topic(name, (kind or "MIXED").upper())
        for spec in args.group or []:
            name, _, kind = spec.partition(":")
            self.group(name, fifo=(kind.lower() == "fifo") if kind else None)

    # -- journal ---------------------------------------------------------------------------

    def _replay(self) -> None:
        assert self.journal is not None
        count = 0
        for record in self.journal.replay():
            count += 1
            kind = record[0]
            if kind == "topic":
                self.topics.setdefault(record[1], Topic(record[1], record[2]))
            elif kind == "group":
                self.groups[record[1]] = GroupConfig(record[1], record[2], record[3])
            elif kind == "msg":
                stored: Stored = record[2]
                self.topics[record[1]].log.append(stored)
            elif kind == "cursor":
                self.cursors[(record[1], record[2])] = Cursor(record[1], record[2], record[3])
            elif kind == "done":
                self.cursors[(record[1], record[2])].finish(record[3])
            elif kind == "attempt":
                cursor = self.cursors[(record[1], record[2])]
                if record[3] >= cursor.low and record[3] not in cursor.done:
                    cursor.attempts[record[3]] = record[4]
        if count:
            log.info("replayed %d journal records from %s", count, self.journal.path)

    def record(self, *rec: Any) -> None:
        if self.journal is not None:
            self.journal.write(*rec)

    def flush(self) -> None:
        if self.journal is not None:
            self.journal.flush()

    # -- topics and groups -----------------------------------------------------------------

    def create_topic(self, name: str, kind: str) -> Topic:
        if kind not in TOPIC_TYPES:
            raise SystemExit(f"topic type {kind!r} must be one of {', '.join(TOPIC_TYPES)}")
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic(name, kind)
            self.record("topic", name, kind)
            self.flush()
            log.info("created topic %s (%s)", name, kind)
        return topic

    def topic(self, name: str, *, create: bool = True) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            if create and self.args.auto_create_topics and not name.startswith("%"):
                return self.create_topic(name, "MIXED")
            raise ProxyError(
                Code.TOPIC_NOT_FOUND,
                f"No topic route info in name server for the topic: {name}",
            )
        return topic

    def group(self, name: str, fifo: bool | None = None) -> GroupConfig:
        config = self.groups.get(name)
        if config is None or (fifo is not None and config.fifo != fifo):
            config = GroupConfig(
                name,
                self.args.fifo_groups if fifo is None else fifo,
                self.args.retry_max_times,
            )
            self.groups[name] = config
            self.record("group", name, config.fifo, config.retry_max_times)
        return config

    def cursor(self, group: str, topic: Topic) -> Cursor:
        key = (group, topic.name)
        cursor = self.cursors.get(key)
        if cursor is None:
            # A new subscription starts at the end of the topic: it sees what is sent after it.
            # Retry and dead-letter topics are read from their start, as a broker does.
            start = 0 if topic.name.startswith("%") else len(topic.log)
            cursor = self.cursors[key] = Cursor(group, topic.name, start)
            self.record("cursor", group, topic.name, cursor.start)
            log.info("group %s subscribed to %s at offset %d", group, topic.name, cursor.start)
        return cursor

    # -- producing -------------------------------------------------------------------------

    def store(self, topic: Topic, message: pb.Message, born_host: str) -> Stored:
        sp = message.system_properties
        group = sp.message_group if sp.HasField("message_group") and sp.message_group else None
        if group is not None:
            queue_id = int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big")
            queue_id %= QUEUE_NUMS
        else:
            queue_id = len(topic.log) % QUEUE_NUMS
        deliver_at = 0
        if sp.HasField("delivery_timestamp"):
            deliver_at = sp.delivery_timestamp.ToMilliseconds()
        stored = Stored(
            offset=len(topic.log),
            queue_id=queue_id,
            message_id=sp.message_id,
            body=bytes(message.body),
            # RocketMQ's property encoding drops empty values (string2messageProperties).
            user_properties={k: v for k, v in message.user_properties.items() if v != ""},
            tag=sp.tag if sp.HasField("tag") and sp.tag else None,
            keys=list(sp.keys),
            message_group=group,
            message_type=sp.message_type,
            born_ms=(
                sp.born_timestamp.ToMilliseconds() if sp.HasField("born_timestamp") else now_ms()
            ),
            born_host=sp.born_host or born_host,
            store_ms=now_ms(),
            deliver_at_ms=deliver_at,
        )
        self.append(topic, stored)
        return stored

    def append(self, topic: Topic, stored: Stored) -> None:
        stored.offset = len(topic.log)
        topic.log.append(stored)
        self.record("msg", topic.name, stored)
        topic.notify()

    # -- consuming -------------------------------------------------------------------------

    def lease(
        self, cursor: Cursor, topic: Topic, batch: int, invisible_ms: int
    ) -> list[tuple[Stored, str, int]]:
        """Take up to ``batch`` visible messages for the group, in offset order."""
        config = self.group(cursor.group)
        now = now_ms()
        # FIFO: a message group with a message in flight (or waiting out its invisible time)
        # is not delivered further until that message is acked or visible again.
        blocked: set[str] = set()
        if config.fifo:
            for offset, held in cursor.leases.items():
                group = topic.log[offset].message_group
                if group is not None and held.deadline_ms > now:
                    blocked.add(group)
        taken: list[tuple[Stored, str, int]] = []
        for offset in range(cursor.low, len(topic.log)):
            if len(taken) >= batch:
                break
            if offset in cursor.done:
                continue
            stored = topic.log[offset]
            fifo_group = stored.message_group if config.fifo else None
            if fifo_group is not None and fifo_group in blocked:
                continue
            lease = cursor.leases.get(offset)
            if (lease is not None and lease.deadline_ms > now) or stored.deliver_at_ms > now:
                if fifo_group is not None:
                    blocked.add(fifo_group)
                continue
            if lease is not None:  # ran out: the old handle is dead
                self.handles.pop(lease.handle, None)
                del cursor.leases[offset]
            delivered = cursor.attempts.get(offset, 0)
            if delivered >= config.retry_max_times + 1:
                self.dead_letter(cursor, topic, stored)
                continue
            attempt = delivered + 1
            cursor.attempts[offset] = attempt
            self.record("attempt", cursor.group, topic.name, offset, attempt)
            handle = self.new_handle(cursor, offset, now + invisible_ms)
            taken.append((stored, handle, attempt))
        return taken

    def new_handle(self, cursor: Cursor, offset: int, deadline_ms: int) -> str:
        handle = f"{offset:x}_{deadline_ms:x}_{secrets.token_hex(8)}"
        cursor.leases[offset] = Lease(handle, deadline_ms)
        self.handles[handle] = (cursor, offset)
        return handle

    def dead_letter(self, cursor: Cursor, topic: Topic, stored: Stored) -> None:
        dlq_name = f"%DLQ%{cursor.group}"
        dlq = self.topics.get(dlq_name) or self.create_topic(dlq_name, "MIXED")
        copy = Stored(
            offset=0,
            queue_id=0,
            message_id=stored.message_id,
            body=stored.body,
            user_properties=dict(stored.user_properties),
            tag=stored.tag,
            keys=list(stored.keys),
            message_group=stored.message_group,
            message_type=stored.message_type,
            born_ms=stored.born_ms,
            born_host=stored.born_host,
            store_ms=now_ms(),
            dlq_origin=(topic.name, stored.message_id),
        )
        self.append(dlq, copy)
        self.finish(cursor, stored.offset)
        log.info("message %s of %s moved to %s", stored.message_id, topic.name, dlq_name)

    def finish(self, cursor: Cursor, offset: int) -> None:
        lease = cursor.leases.get(offset)
        if lease is not None:
            self.handles.pop(lease.handle, None)
        cursor.finish(offset)
        self.record("done", cursor.group, cursor.topic, offset)

    def resolve(self, handle: str, group: str, topic: str) -> tuple[Cursor, int]:
        found = self.handles.get(handle)
        if found is None:
            raise ProxyError(Code.INVALID_RECEIPT_HANDLE, "receipt handle is expired")
        cursor, offset = found
        lease = cursor.leases.get(offset)
        if cursor.group != group or cursor.topic != topic:
            raise ProxyError(Code.INVALID_RECEIPT_HANDLE, "receipt handle does not match")
        if lease is None or lease.handle != handle or lease.deadline_ms <= now_ms():
            self.handles.pop(handle, None)
            raise ProxyError(Code.INVALID_RECEIPT_HANDLE, "receipt handle is expired")
        return cursor, offset

    def next_change_ms(self, cursor: Cursor, topic: Topic) -> int | None:
        """When a leased/delayed message of this cursor becomes visible again."""
        times = [lease.deadline_ms for lease in cursor.leases.values()]
        times += [
            m.deliver_at_ms for m in topic.log[cursor.low:] if m.deliver_at_ms > now_ms()
        ][:100]
        return min(times) if times else None


# -- the service --------------------------------------------------------------------------------


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class Service(svc_grpc.MessagingServiceServicer):  # type: ignore[misc]
    def __init__(self, state: State) -> None:
        self.state = state

    # -- request context -------------------------------------------------------------------

    def check(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """Authenticate (when ACLs are on) and return the client id."""
        md = _metadata(context)
        acl: dict[str, str] = self.state.args.acl_map
        if acl:
            authorization = md.get("authorization", "")
            if not authorization:
                raise ProxyError(Code.UNAUTHORIZED, "username cannot be null.")
            date_time = md.get("x-mq-date-time", "")
            if not date_time:
                raise ProxyError(Code.UNAUTHORIZED, "datetime is null.")
            parts = dict(
                kv.strip().split("=", 1)
                for kv in authorization.split(" ", 1)[-1].split(",")
                if "=" in kv
            )
            user = parts.get("Credential", "").split("/")[0]
            if not user:
                raise ProxyError(Code.UNAUTHORIZED, "username cannot be null.")
            if user not in acl:
                raise ProxyError(Code.UNAUTHORIZED, f"User:{user} is not found.")
            expected = hmac.new(acl[user].encode(), date_time.encode(), hashlib.sha1).hexdigest()
            if not hmac.compare_digest(expected.upper(), parts.get("Signature", "").upper()):
                raise ProxyError(Code.UNAUTHORIZED, "check signature failed.")
        client_id = md.get("x-mq-client-id", "")
        if not client_id:
            raise ProxyError(Code.CLIENT_ID_REQUIRED, "x-mq-client-id is required")
        return client_id

    @staticmethod
    def validate_topic(name: str) -> None:
        if not name.strip():
            raise ProxyError(Code.ILLEGAL_TOPIC, "The specified topic is blank")
        limit = 255 if name.startswith(("%DLQ%", "%RETRY%")) else TOPIC_MAX_LENGTH
        if len(name) > limit:
            raise ProxyError(
                Code.ILLEGAL_TOPIC,
                f"The specified topic is longer than topic max length {limit}.",
            )
        if not _NAME.match(name):
            raise ProxyError(
                Code.ILLEGAL_TOPIC,
                f"The specified topic[{name}] contains illegal characters, "
                "allowing only ^[%|a-zA-Z0-9_-]+$",
            )
        if name in SYSTEM_TOPICS or name.startswith("rmq_sys_"):
            raise ProxyError(Code.ILLEGAL_TOPIC, "cannot access system topic")

    @staticmethod
    def validate_group(name: str) -> None:
        if not name.strip():
            raise ProxyError(Code.ILLEGAL_CONSUMER_GROUP, "the specified group is blank")
        if len(name) > GROUP_MAX_LENGTH:
            raise ProxyError(
                Code.ILLEGAL_CONSUMER_GROUP,
                f"the specified group[{name}] is longer than group max length: "
                f"{GROUP_MAX_LENGTH}.",
            )
        if not _NAME.match(name):
            raise ProxyError(
                Code.ILLEGAL_CONSUMER_GROUP,
                f"the specified group[{name}] contains illegal characters, "
                "allowing only ^[%|a-zA-Z0-9_-]+$",
            )
        if name in SYSTEM_GROUPS or name.startswith("CID_RMQ_SYS_"):
            raise ProxyError(Code.ILLEGAL_CONSUMER_GROUP, "cannot use system consumer group")

    # -- route -----------------------------------------------------------------------------

    async def QueryRoute(self, request: svc.QueryRouteRequest, context: Any) -> Any:
        try:
            self.check(context)
            self.validate_topic(request.topic.name)
            topic = self.state.topic(request.topic.name)
        except ProxyError as exc:
            return svc.QueryRouteResponse(status=status(exc.code, exc.message))
        broker = self._broker(request.endpoints)
        queues = [
            pb.MessageQueue(
                topic=request.topic,
                id=i,
                permission=pb.READ_WRITE,
                broker=broker,
                accept_message_types=_ACCEPT[topic.kind],
            )
            for i in range(QUEUE_NUMS)
        ]
        return svc.QueryRouteResponse(status=status(Code.OK), message_queues=queues)

    def _broker(self, endpoints: pb.Endpoints) -> pb.Broker:
        # Like a proxy in cluster mode, answer with the access point the client used.
        if not endpoints.addresses:
            endpoints = pb.Endpoints(
                scheme=pb.IPv4,
                addresses=[pb.Address(host=self.state.args.host, port=self.state.args.bound_port)],
            )
        return pb.Broker(name=BROKER_NAME, id=0, endpoints=endpoints)

    async def QueryAssignment(self, request: svc.QueryAssignmentRequest, context: Any) -> Any:
        try:
            self.check(context)
            self.validate_topic(request.topic.name)
            self.validate_group(request.group.name)
            topic = self.state.topic(request.topic.name)
        except ProxyError as exc:
            return svc.QueryAssignmentResponse(status=status(exc.code, exc.message))
        fifo = self.state.group(request.group.name).fifo
        broker = self._broker(request.endpoints)
        ids = range(QUEUE_NUMS) if fifo else [-1]
        assignments = [
            pb.Assignment(
                message_queue=pb.MessageQueue(
                    topic=request.topic,
                    id=i,
                    permission=pb.READ_WRITE,
                    broker=broker,
                    accept_message_types=_ACCEPT[topic.kind],
                )
            )
            for i in ids
        ]
        return svc.QueryAssignmentResponse(status=status(Code.OK), assignments=assignments)

    # -- clients ---------------------------------------------------------------------------

    def merged_settings(self, settings: pb.Settings) -> pb.Settings:
        merged = pb.Settings()
        merged.CopyFrom(settings)
        if settings.HasField("publishing"):
            merged.backoff_policy.max_attempts = 3
            merged.backoff_policy.exponential_backoff.initial.FromMilliseconds(10)
            merged.backoff_policy.exponential_backoff.max.FromMilliseconds(1000)
            merged.backoff_policy.exponential_backoff.multiplier = 2.0
            merged.publishing.validate_message_type = True
            merged.publishing.max_body_size = MAX_BODY_SIZE
        elif settings.HasField("subscription"):
            config = self.state.group(settings.subscription.group.name)
            merged.subscription.receive_batch_size = 32
            merged.subscription.long_polling_timeout.FromSeconds(self.state.args.max_polling)
            merged.subscription.fifo = config.fifo
            merged.backoff_policy.max_attempts = config.retry_max_times + 1
            merged.backoff_policy.customized_backoff.next.extend(
                [pb_duration(s * 1000) for s in RETRY_SCHEDULE]
            )
        merged.metric.on = False
        return merged

    def register(self, client_id: str, settings: pb.Settings) -> None:
        self.state.clients[client_id] = ClientInfo(client_id, settings)
        if settings.HasField("subscription"):
            group = settings.subscription.group.name
            self.validate_group(group)
            self.state.group(group)
            for entry in settings.subscription.subscriptions:
                try:  # with --auto-create-topics, subscribing is a first use too
                    topic = self.state.topic(entry.topic.name)
                except ProxyError:
                    continue  # its receives will answer TOPIC_NOT_FOUND
                self.state.cursor(group, topic)
            self.state.flush()
        elif settings.HasField("publishing"):
            for resource in settings.publishing.topics:
                self.validate_topic(resource.name)

    async def Telemetry(
        self, request_iterator: AsyncIterator[svc.TelemetryCommand], context: Any
    ) -> AsyncIterator[svc.TelemetryCommand]:
        async for command in request_iterator:
            try:
                client_id = self.check(context)
                if command.HasField("settings"):
                    settings = command.settings
                    if not (settings.HasField("publishing") or settings.HasField("subscription")):
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "there is no publishing or subscription data in settings",
                        )
                    self.register(client_id, settings)
                    yield svc.TelemetryCommand(
                        status=status(Code.OK), settings=self.merged_settings(settings)
                    )
            except ProxyError as exc:
                yield svc.TelemetryCommand(status=status(exc.code, exc.message))

    async def Heartbeat(self, request: svc.HeartbeatRequest, context: Any) -> Any:
        try:
            client_id = self.check(context)
            client = self.state.clients.get(client_id)
            if client is None:
                return svc.HeartbeatResponse(
                    status=status(
                        Code.UNRECOGNIZED_CLIENT_TYPE, "cannot find client settings for this client"
                    )
                )
            if client.settings.HasField("subscription"):
                self.validate_group(request.group.name)
                self.register(client_id, client.settings)
        except ProxyError as exc:
            return svc.HeartbeatResponse(status=status(exc.code, exc.message))
        return svc.HeartbeatResponse(status=status(Code.OK))

    async def NotifyClientTermination(
        self, request: svc.NotifyClientTerminationRequest, context: Any
    ) -> Any:
        try:
            client_id = self.check(context)
        except ProxyError as exc:
            return svc.NotifyClientTerminationResponse(status=status(exc.code, exc.message))
        if self.state.clients.pop(client_id, None) is None:
            return svc.NotifyClientTerminationResponse(
                status=status(
                    Code.UNRECOGNIZED_CLIENT_TYPE, "cannot find client settings for this client"
                )
            )
        return svc.NotifyClientTerminationResponse(status=status(Code.OK))

    # -- producing -------------------------------------------------------------------------

    async def SendMessage(self, request: svc.SendMessageRequest, context: Any) -> Any:
        try:
            self.check(context)
            if not request.messages:
                raise ProxyError(Code.MESSAGE_CORRUPTED, "no message to send")
            first = request.messages[0].topic
            self.validate_topic(first.name)
            topic = self.state.topic(first.name, create=False)
            for message in request.messages:
                if message.topic != first:
                    raise ProxyError(Code.MESSAGE_CORRUPTED, "topic in message is not same")
                self.validate_message(topic, message)
        except ProxyError as exc:
            return svc.SendMessageResponse(status=status(exc.code, exc.message))
        peer = context.peer() or ""
        entries = []
        for message in request.messages:
            stored = self.state.store(topic, message, peer)
            entries.append(
                svc.SendResultEntry(
                    status=status(Code.OK),
                    message_id=stored.message_id,
                    offset=stored.offset,
                )
            )
        self.state.flush()
        return svc.SendMessageResponse(status=status(Code.OK), entries=entries)

    @staticmethod
    def validate_message(topic: Topic, message: pb.Message) -> None:
        if not message.body:
            raise ProxyError(Code.MESSAGE_BODY_EMPTY, "message body cannot be empty")
        if len(message.body) > MAX_BODY_SIZE:
            raise ProxyError(
                Code.MESSAGE_BODY_TOO_LARGE, f"message body cannot exceed the max {MAX_BODY_SIZE}"
            )
        props = message.user_properties
        if len(props) > MAX_USER_PROPERTIES:
            raise ProxyError(
                Code.MESSAGE_PROPERTIES_TOO_LARGE,
                f"too many user properties, max is {MAX_USER_PROPERTIES}",
            )
        size = 0
        for key, value in props.items():
            if key in SYSTEM_PROPERTIES:
                raise ProxyError(
                    Code.ILLEGAL_MESSAGE_PROPERTY_KEY, f"property is used by system: {key}"
                )
            if has_control(key):
                raise ProxyError(
                    Code.ILLEGAL_MESSAGE_PROPERTY_KEY,
                    "the key of property cannot contain control character",
                )
            if has_control(value):
                raise ProxyError(
                    Code.ILLEGAL_MESSAGE_PROPERTY_KEY,
                    "the value of property cannot contain control character",
                )
            size += len(key.encode()) + len(value.encode())
        sp = message.system_properties
        if sp.HasField("tag"):
            if sp.tag and not sp.tag.strip():
                raise ProxyError(
                    Code.ILLEGAL_MESSAGE_TAG, "tag cannot be the char sequence of whitespace"
                )
            if "|" in sp.tag:
                raise ProxyError(Code.ILLEGAL_MESSAGE_TAG, "tag cannot contain '|'")
            size += len(sp.tag.encode())
        for key in sp.keys:
            if key and not key.strip():
                raise ProxyError(
                    Code.ILLEGAL_MESSAGE_KEY, "key cannot be the char sequence of whitespace"
                )
            if has_control(key):
                raise ProxyError(Code.ILLEGAL_MESSAGE_KEY, "key cannot contain control character")
            size += len(key.encode())
        if size > MAX_USER_PROPERTY_SIZE:
            raise ProxyError(
                Code.MESSAGE_PROPERTIES_TOO_LARGE,
                f"the total size of user property is too large, max is {MAX_USER_PROPERTY_SIZE}",
            )
        if not sp.message_id.strip():
            raise ProxyError(Code.ILLEGAL_MESSAGE_ID, "message id cannot be empty")
        if sp.HasField("message_group") and sp.message_group:
            group = sp.message_group
            if not group.strip():
                raise ProxyError(
                    Code.ILLEGAL_MESSAGE_GROUP,
                    "message group cannot be the char sequence of whitespace",
                )
            if len(group.encode()) >= MAX_MESSAGE_GROUP_SIZE:
                raise ProxyError(
                    Code.ILLEGAL_MESSAGE_GROUP,
                    f"message group exceed the max size {MAX_MESSAGE_GROUP_SIZE}",
                )
            if has_control(group):
                raise ProxyError(
                    Code.ILLEGAL_MESSAGE_GROUP, "message group cannot contain control character"
                )
        if sp.message_type not in _ACCEPT[topic.kind]:
            raise ProxyError(
                Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE,
                f"the message type {pb.MessageType.Name(sp.message_type)} does not match the "
                f"type {topic.kind} of topic {topic.name}",
            )

    # -- consuming -------------------------------------------------------------------------

    async def ReceiveMessage(
        self, request: svc.ReceiveMessageRequest, context: Any
    ) -> AsyncIterator[svc.ReceiveMessageResponse]:
        def done(code: int, message: str | None = None) -> list[svc.ReceiveMessageResponse]:
            return [
                svc.ReceiveMessageResponse(status=status(code, message)),
                svc.ReceiveMessageResponse(delivery_timestamp=pb_timestamp(now_ms())),
            ]

        args = self.state.args
        try:
            self.check(context)
            remaining = context.time_remaining()
            remaining_ms = int(remaining * 1000) if remaining is not None else 3_600_000
            if request.HasField("long_polling_timeout"):
                polling = request.long_polling_timeout.ToMilliseconds()
            else:
                polling = remaining_ms - 3000 // 2
            polling = min(max(polling, args.min_polling * 1000), args.max_polling * 1000)
            if polling > remaining_ms:
                if remaining_ms >= args.min_polling * 1000:
                    polling = remaining_ms
                else:
                    raise ProxyError(
                        Code.ILLEGAL_POLLING_TIME,
                        "The deadline time remaining is not enough for polling, please check "
                        "network condition",
                    )
            self.validate_topic(request.message_queue.topic.name)
            self.validate_group(request.group.name)
            invisible = request.invisible_duration.ToMilliseconds()
            min_invisible = int(args.min_invisible_time * 1000)
            if invisible < min_invisible:
                raise ProxyError(
                    Code.ILLEGAL_INVISIBLE_TIME,
                    f"the invisibleTime is too small. min is {min_invisible}",
                )
            if invisible > MAX_INVISIBLE_MS:
                raise ProxyError(
                    Code.ILLEGAL_INVISIBLE_TIME,
                    f"the invisibleTime is too large. max is {MAX_INVISIBLE_MS}",
                )
            topic = self.state.topic(request.message_queue.topic.name, create=False)
            self.state.group(request.group.name)
            cursor = self.state.cursor(request.group.name, topic)
        except ProxyError as exc:
            for response in done(exc.code, exc.message):
                yield response
            return
        batch = max(1, request.batch_size or 32)
        deadline = time.monotonic() + polling / 1000
        while True:
            if context.cancelled():
                return
            taken = self.state.lease(cursor, topic, batch, invisible)
            if taken:
                break
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                for response in done(Code.MESSAGE_NOT_FOUND, "no new message"):
                    yield response
                return
            wake = self.state.next_change_ms(cursor, topic)
            if wake is not None:
                remaining_s = min(remaining_s, max(0.01, (wake - now_ms()) / 1000))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(topic.changed.wait(), timeout=min(remaining_s, 1.0))
        self.state.flush()
        try:
            yield svc.ReceiveMessageResponse(status=status(Code.OK))
            for stored, handle, attempt in taken:
                yield svc.ReceiveMessageResponse(
                    message=self.to_proto(topic, stored, handle, attempt, invisible)
                )
            yield svc.ReceiveMessageResponse(delivery_timestamp=pb_timestamp(now_ms()))
        except BaseException:
            # Like the proxy when it cannot write to the client: visible again in 1 s.
            for stored, handle, _ in taken:
                lease = cursor.leases.get(stored.offset)
                if lease is not None and lease.handle == handle:
                    lease.deadline_ms = min(lease.deadline_ms, now_ms() + 1000)
            raise

    def to_proto(
        self, topic: Topic, stored: Stored, handle: str, attempt: int, invisible_ms: int
    ) -> pb.Message:
        props = dict(stored.user_properties)
        sp = pb.SystemProperties(
            keys=stored.keys,
            message_id=stored.message_id,
            body_digest=pb.Digest(
                type=pb.MD5, checksum=hashlib.md5(stored.body).hexdigest().upper()
            ),
            body_encoding=pb.IDENTITY,
            message_type=stored.message_type,
            born_timestamp=pb_timestamp(stored.born_ms),
            born_host=stored.born_host,
            store_timestamp=pb_timestamp(stored.store_ms),
            store_host=f"{self.state.args.host}:{self.state.args.bound_port}",
            receipt_handle=handle,
            queue_id=stored.queue_id,
            queue_offset=stored.offset,
            delivery_attempt=attempt,
        )
        if stored.tag is not None:
            sp.tag = stored.tag
        if stored.message_group is not None:
            sp.message_group = stored.message_group
            props[SHARDING_KEY] = stored.message_group
        if stored.deliver_at_ms:
            sp.delivery_timestamp.CopyFrom(pb_timestamp(stored.deliver_at_ms))
        if stored.dlq_origin is not None:
            sp.dead_letter_queue.topic = stored.dlq_origin[0]
            sp.dead_letter_queue.message_id = stored.dlq_origin[1]
        return pb.Message(
            topic=pb.Resource(name=topic.name),
            user_properties=props,
            system_properties=sp,
            body=stored.body,
        )

    async def AckMessage(self, request: svc.AckMessageRequest, context: Any) -> Any:
        try:
            self.check(context)
            self.validate_topic(request.topic.name)
            self.validate_group(request.group.name)
        except ProxyError as exc:
            return svc.AckMessageResponse(status=status(exc.code, exc.message))
        entries = []
        codes: set[int] = set()
        for entry in request.entries:
            try:
                cursor, offset = self.state.resolve(
                    entry.receipt_handle, request.group.name, request.topic.name
                )
                self.state.finish(cursor, offset)
                self.state.topics[cursor.topic].notify()
                code, message = Code.OK, Code.Name(Code.OK)
            except ProxyError as exc:
                code, message = exc.code, exc.message
            codes.add(code)
            entries.append(
                svc.AckMessageResultEntry(
                    message_id=entry.message_id,
                    receipt_handle=entry.receipt_handle,
                    status=status(code, message),
                )
            )
        self.state.flush()
        if len(codes) > 1:
            overall = status(Code.MULTIPLE_RESULTS)
        elif codes:
            code = codes.pop()
            overall = status(code)
        else:
            overall = status(Code.INTERNAL_SERVER_ERROR, "ack message result is empty")
        return svc.AckMessageResponse(status=overall, entries=entries)

    async def ChangeInvisibleDuration(
        self, request: svc.ChangeInvisibleDurationRequest, context: Any
    ) -> Any:
        try:
            self.check(context)
            self.validate_topic(request.topic.name)
            self.validate_group(request.group.name)
            invisible = request.invisible_duration.ToMilliseconds()
            if invisible < 0:
                raise ProxyError(
                    Code.ILLEGAL_INVISIBLE_TIME, "the invisibleTime is too small. min is 0"
                )
            if invisible > MAX_INVISIBLE_MS:
                raise ProxyError(
                    Code.ILLEGAL_INVISIBLE_TIME,
                    f"the invisibleTime is too large. max is {MAX_INVISIBLE_MS}",
                )
            cursor, offset = self.state.resolve(
                request.receipt_handle, request.group.name, request.topic.name
            )
        except ProxyError as exc:
            return svc.ChangeInvisibleDurationResponse(status=status(exc.code, exc.message))
        self.state.handles.pop(request.receipt_handle, None)
        handle = self.state.new_handle(cursor, offset, now_ms() + invisible)
        self.state.topics[cursor.topic].notify()
        return svc.ChangeInvisibleDurationResponse(status=status(Code.OK), receipt_handle=handle)


def pb_timestamp(ms: int) -> Any:
    from google.protobuf import timestamp_pb2  # type: ignore[import-untyped,unused-ignore]

    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def pb_duration(ms: int) -> Any:
    from google.protobuf import duration_pb2  # type: ignore[import-untyped,unused-ignore]

    d = duration_pb2.Duration()
    d.FromMilliseconds(ms)
    return d


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="RocketMQ 5 gRPC test server (for tests only; not a RocketMQ broker)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", help="write the bound port here once serving")
    p.add_argument("--data-dir", help="keep data in an append-only journal in this directory")
    p.add_argument("--topic", action="append", metavar="NAME[:TYPE]",
                   help="create a topic (TYPE: NORMAL, FIFO, DELAY, TRANSACTION, MIXED)")
    p.add_argument("--auto-create-topics", action="store_true",
                   help="create unknown topics (as MIXED) on first use")
    p.add_argument("--group", action="append", metavar="NAME[:fifo]",
                   help="create a consumer group (FIFO with ':fifo')")
    p.add_argument("--fifo-groups", action="store_true",
                   help="consumer groups created on first use are FIFO (consumeMessageOrderly)")
    p.add_argument("--retry-max-times", type=int, default=16,
                   help="deliveries before dead-lettering = this + 1 (RocketMQ default 16)")
    p.add_argument("--min-invisible-time", type=float, default=10.0,
                   help="smallest invisible duration a receive may ask for, seconds (proxy: 10)")
    p.add_argument("--min-polling", type=int, default=5, help="min long polling, seconds")
    p.add_argument("--max-polling", type=int, default=20, help="max long polling, seconds")
    p.add_argument("--acl", action="append", metavar="AK:SK",
                   help="require authentication; accept these access/secret key pairs")
    p.add_argument("--check", metavar="HOST:PORT",
                   help="do not serve: exit 0 if a test server answers at HOST:PORT")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    args.acl_map = dict(item.split(":", 1) for item in (args.acl or []))
    return args


def check(target: str, timeout: float = 2.0) -> int:
    """Exit status 0 if something answers the MessagingService at ``target``."""
    channel = grpc.insecure_channel(target)
    try:
        stub = svc_grpc.MessagingServiceStub(channel)
        response = stub.Heartbeat(
            svc.HeartbeatRequest(client_type=pb.PRODUCER),
            metadata=[("x-mq-client-id", "rocketmq-test-server-check")],
            timeout=timeout,
        )
        return 0 if response.status.code else 1
    except grpc.RpcError:
        return 1
    finally:
        channel.close()


async def serve(args: argparse.Namespace) -> None:
    state = State(args)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    svc_grpc.add_MessagingServiceServicer_to_server(Service(state), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        raise SystemExit(f"cannot bind {args.host}:{args.port}")
    args.bound_port = port
    await server.start()
    log.info("RocketMQ test server (not a broker) serving on %s:%d", args.host, port)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await server.stop(grace=1)
    state.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.check:
        return check(args.check)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
