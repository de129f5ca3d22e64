"""Create RocketMQ topics and consumer groups through the name server and the brokers' remoting
admin requests — what ``mqadmin updateTopic`` / ``updateSubGroup`` do — and position new
consumer groups, with the standard library only, so that it also runs as a script before
anything is installed::

    python admin.py ready NAMESRV_HOST:PORT [TIMEOUT]   # a topic can be created and written
    python admin.py topic NAMESRV_HOST:PORT NAME        # create a MIXED topic if missing
    python admin.py group NAMESRV_HOST:PORT NAME [RETRY_MAX_TIMES]
                                                        # create a FIFO consumer group if missing

A RocketMQ 5 proxy creates no topics for its clients, and a consumer group created on first use
is not FIFO, so the adapter's ``auto_create`` option calls :func:`ensure_topic` and
:func:`ensure_group` for development and test clusters. Both leave existing topics and groups
as they are. Production clusters create them with their own tools.

With a name server to ask, the adapter also calls :func:`start_group_at_end` for every new
consumer, so that a new group starts where it subscribed (see its docstring).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import socket
import sys
import time
from typing import Any

# Request and response codes (org.apache.rocketmq.remoting.protocol.RequestCode/ResponseCode).
SEND_MESSAGE = 10
QUERY_CONSUMER_OFFSET = 14
UPDATE_CONSUMER_OFFSET = 15
UPDATE_AND_CREATE_TOPIC = 17
GET_MAX_OFFSET = 30
GET_ROUTEINFO_BY_TOPIC = 105
GET_BROKER_CLUSTER_INFO = 106
UPDATE_AND_CREATE_SUBSCRIPTIONGROUP = 200
GET_ALL_SUBSCRIPTIONGROUP_CONFIG = 201
DELETE_SUBSCRIPTIONGROUP = 207
DELETE_TOPIC_IN_BROKER = 215
DELETE_TOPIC_IN_NAMESRV = 216
GET_SUBSCRIPTIONGROUP_CONFIG = 352
AUTH_CREATE_USER = 3001
AUTH_UPDATE_USER = 3002
AUTH_GET_USER = 3004
AUTH_CREATE_ACL = 3006
AUTH_UPDATE_ACL = 3007
AUTH_GET_ACL = 3009
SUCCESS = 0
TOPIC_NOT_EXIST = 17
QUERY_NOT_FOUND = 22
SUBSCRIPTION_GROUP_NOT_EXIST = 26
NO_PERMISSION = 16

MASTER_ID = "0"
_RESPONSE_FLAG = 1
_opaque = itertools.count(1)
# fastjson writes maps with number keys unquoted ({0:"127.0.0.1:10911"}), which is not JSON.
_BARE_NUMBER_KEY = re.compile(r"([{,])(-?\d+):")


#: An ACL user's access key and secret key (RocketMQ's ACL 2.0 user name and password).
Credentials = tuple[str, str]


def sign(fields: dict[str, str], body: bytes, credentials: Credentials) -> None:
    """Add the ``AccessKey`` and ``Signature`` fields of an ACL-checked request, as the Java
    client's ``AclClientRPCHook`` does: HMAC-SHA1 with the secret key over the values of the
    fields sorted by name, then the body, in base64."""
    access, secret = credentials
    fields["AccessKey"] = access
    content = "".join(value for _, value in sorted(fields.items())).encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha1).digest()
    fields["Signature"] = base64.b64encode(digest).decode()


class AdminError(Exception):
    """A remoting request failed: no answer, or an answer with an error code."""


class GroupMissing(AdminError):
    """The consumer group does not exist on a broker that creates none on demand."""


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise AdminError(f"{text!r} is not HOST:PORT")
    return host, int(port)


class Session:
    """One connection to a name server or broker, for requests one after the other."""

    def __init__(
        self, address: str, *, timeout: float = 5.0, credentials: Credentials | None = None
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.credentials = credentials
        self._sock = socket.create_connection(_address(address), timeout=timeout)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def call(
        self, code: int, fields: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        """One request; returns the response header and body."""
        opaque = next(_opaque)
        fields = dict(fields or {})
        if self.credentials is not None:
            sign(fields, body, self.credentials)
        header = json.dumps(
            {
                "code": code,
                "extFields": fields,
                "flag": 0,
                "language": "PYTHON",
                "opaque": opaque,
                "serializeTypeCurrentRPC": "JSON",
                "version": 0,
            }
        ).encode()
        self._sock.settimeout(self.timeout)
        self._sock.sendall(
            (4 + len(header) + len(body)).to_bytes(4, "big")
            + len(header).to_bytes(4, "big")
            + header
            + body
        )
        deadline = time.monotonic() + self.timeout
        length = int.from_bytes(self._read(4, deadline), "big")
        if not 4 <= length <= 64 << 20:
            raise AdminError(f"{self.address} answered a frame of {length} bytes: not RocketMQ")
        frame = self._read(length, deadline)
        header_length = int.from_bytes(frame[:4], "big") & 0xFFFFFF
        try:
            reply = json.loads(frame[4 : 4 + header_length])
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or "code" not in reply or not reply.get("flag", 0) & 1:
            raise AdminError(f"{self.address} answered something that is not a RocketMQ response")
        if reply.get("opaque") != opaque:
            raise AdminError(f"{self.address} answered another request ({reply.get('opaque')})")
        return reply, frame[4 + header_length :]

    def _read(self, count: int, deadline: float) -> bytes:
        data = b""
        while len(data) < count:
            self._sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self._sock.recv(count - len(data))
            except TimeoutError:
                raise TimeoutError(
                    f"{self.address} accepted the connection but did not answer within "
                    f"{self.timeout} s"
                ) from None
            if not chunk:
                raise ConnectionError(f"{self.address} closed the connection without answering")
            data += chunk
        return data


def call(
    address: str,
    code: int,
    fields: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    timeout: float = 5.0,
    credentials: Credentials | None = None,
) -> tuple[dict[str, Any], bytes]:
    """One request on its own connection; returns the response header and body."""
    with Session(address, timeout=timeout, credentials=credentials) as session:
        return session.call(code, fields, body)


def _json(body: bytes) -> Any:
    return json.loads(_BARE_NUMBER_KEY.sub(r'\1"\2":', body.decode()))


class AdminRefused(AdminError):
    """The broker's ACL refused the request (``NO_PERMISSION``): credentials or rights."""

    @property
    def denied(self) -> bool:
        """Whether the user was recognised but lacks the right (not unknown, wrong key)."""
        return "no permission" in str(self).lower()


def _failed(reply: dict[str, Any], doing: str) -> AdminError:
    kind = AdminRefused if reply.get("code") == NO_PERMISSION else AdminError
    return kind(f"{doing}: code {reply.get('code')}: {reply.get('remark') or 'no remark'}")


def brokers(
    namesrv: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> list[tuple[str, int, str]]:
    """(broker name, broker id, address) of every broker the name server knows; id 0 is a
    group's primary (master), the others its replicas."""
    reply, body = call(namesrv, GET_BROKER_CLUSTER_INFO, timeout=timeout, credentials=credentials)
    if reply["code"] != SUCCESS:
        raise _failed(reply, f"asking {namesrv} for its brokers")
    table = _json(body).get("brokerAddrTable", {}) if body else {}
    return sorted(
        (name, int(broker_id), address)
        for name, data in table.items()
        for broker_id, address in data.get("brokerAddrs", {}).items()
    )


def master_brokers(
    namesrv: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> dict[str, str]:
    """Broker name → address of its master, as the name server knows them."""
    return {
        name: address
        for name, broker_id, address in brokers(namesrv, timeout=timeout, credentials=credentials)
        if broker_id == int(MASTER_ID)
    }


def topic_exists(
    namesrv: str, topic: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> bool:
    reply, _ = call(
        namesrv, GET_ROUTEINFO_BY_TOPIC, {"topic": topic}, timeout=timeout, credentials=credentials
    )
    if reply["code"] == TOPIC_NOT_EXIST:
        return False
    if reply["code"] != SUCCESS:
        raise _failed(reply, f"looking up topic {topic!r} on {namesrv}")
    return True


def ensure_topic(
    namesrv: str,
    topic: str,
    *,
    queues: int = 4,
    message_type: str = "MIXED",
    timeout: float = 5.0,
    credentials: Credentials | None = None,
) -> bool:
    """Create ``topic`` as a MIXED topic on every broker unless the name server knows it.

    Every broker, replicas too: a replica copies its primary's topics only every few seconds,
    and one that a failover makes primary must already know a topic made just before.

    MIXED: mqkit sends keyed messages as FIFO messages and the others as NORMAL ones, and a
    RocketMQ 5 topic takes only the message types it declares (``message_type``: another type,
    e.g. NORMAL, for tests of what a wrongly made topic does). Returns whether it created it.
    """
    if topic_exists(namesrv, topic, timeout=timeout, credentials=credentials):
        return False
    every = brokers(namesrv, timeout=timeout, credentials=credentials)
    if not any(broker_id == int(MASTER_ID) for _, broker_id, _ in every):
        raise AdminError(f"the name server {namesrv} knows no broker to create {topic!r} on")
    fields = {
        "topic": topic,
        "defaultTopic": "TBW102",
        "readQueueNums": str(queues),
        "writeQueueNums": str(queues),
        "perm": "6",  # read and write
        "topicFilterType": "SINGLE_TAG",
        "topicSysFlag": "0",
        "order": "false",
        "attributes": f"+message.type={message_type}",
    }
    for name, _, address in every:
        reply, _ = call(
            address, UPDATE_AND_CREATE_TOPIC, fields, timeout=timeout, credentials=credentials
        )
        if reply["code"] != SUCCESS:
            raise _failed(reply, f"creating topic {topic!r} on broker {name} ({address})")
    # The brokers register the new topic with the name server; wait until it answers for it.
    deadline = time.monotonic() + timeout
    while not topic_exists(namesrv, topic, timeout=timeout, credentials=credentials):
        if time.monotonic() > deadline:
            raise AdminError(f"{namesrv} did not learn of the new topic {topic!r} in {timeout} s")
        time.sleep(0.05)
    return True


def ensure_group(
    namesrv: str,
    group: str,
    *,
    retry_max_times: int = 16,
    timeout: float = 5.0,
    credentials: Credentials | None = None,
) -> bool:
    """Create ``group`` as a FIFO consumer group (``consumeMessageOrderly``) on every master
    broker that does not have it yet: RocketMQ keeps message-group order only for FIFO groups.
    ``retry_max_times``: deliveries after the first before RocketMQ moves a message to
    ``%DLQ%<group>``. Replicas get it too (see ``ensure_topic``). Returns whether it created
    it anywhere."""
    config = json.dumps(
        {
            "groupName": group,
            "consumeEnable": True,
            "consumeFromMinEnable": True,
            "consumeBroadcastEnable": True,
            "consumeMessageOrderly": True,
            "retryQueueNums": 1,
            "retryMaxTimes": retry_max_times,
            "brokerId": 0,
            "whichBrokerWhenConsumeSlowly": 1,
            "notifyConsumerIdsChangedEnable": True,
        }
    ).encode()
    created = False
    for name, _, address in brokers(namesrv, timeout=timeout, credentials=credentials):
        if group in groups(address, timeout=timeout, credentials=credentials):
            continue
        reply, _ = call(
            address,
            UPDATE_AND_CREATE_SUBSCRIPTIONGROUP,
            body=config,
            timeout=timeout,
            credentials=credentials,
        )
        if reply["code"] != SUCCESS:
            raise _failed(reply, f"creating group {group!r} on broker {name} ({address})")
        created = True
    return created


def delete_group(
    namesrv: str, group: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> None:
    """Delete consumer group ``group`` (its positions too) and its retry and dead-letter
    topics, as ``mqadmin deleteSubGroup`` does: for a group that lived only as long as its
    consumer (a reply inbox)."""
    for _, _, address in brokers(namesrv, timeout=timeout, credentials=credentials):
        fields = {"groupName": group, "cleanOffset": "true"}
        reply, _ = call(
            address, DELETE_SUBSCRIPTIONGROUP, fields, timeout=timeout, credentials=credentials
        )
        if reply["code"] != SUCCESS:
            raise _failed(reply, f"deleting group {group!r} on {address}")
    for topic in (f"%RETRY%{group}", f"%DLQ%{group}"):
        delete_topic(namesrv, topic, timeout=timeout, credentials=credentials)


def delete_topic(
    namesrv: str, topic: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> None:
    """Delete ``topic`` and its messages on every broker and on the name server, as
    ``mqadmin deleteTopic`` does (a topic that does not exist is no error)."""
    for _, _, address in brokers(namesrv, timeout=timeout, credentials=credentials):
        reply, _ = call(
            address,
            DELETE_TOPIC_IN_BROKER,
            {"topic": topic},
            timeout=timeout,
            credentials=credentials,
        )
        if reply["code"] != SUCCESS:
            raise _failed(reply, f"deleting topic {topic!r} on {address}")
    reply, _ = call(
        namesrv, DELETE_TOPIC_IN_NAMESRV, {"topic": topic}, timeout=timeout, credentials=credentials
    )
    if reply["code"] != SUCCESS:
        raise _failed(reply, f"deleting topic {topic!r} on {namesrv}")


def groups(
    broker: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> dict[str, dict[str, Any]]:
    """The consumer groups a broker has: name → configuration.

    The whole table, because asking for one group (``GET_SUBSCRIPTIONGROUP_CONFIG``) creates it
    with default settings (not FIFO) on a broker with ``autoCreateSubscriptionGroup=true``, the
    default, and then answers that it exists.
    """
    reply, body = call(
        broker, GET_ALL_SUBSCRIPTIONGROUP_CONFIG, timeout=timeout, credentials=credentials
    )
    if reply["code"] != SUCCESS:
        raise _failed(reply, f"asking broker {broker} for its consumer groups")
    table = _json(body).get("subscriptionGroupTable", {}) if body else {}
    return dict(table)


def read_queues(
    namesrv: str, topic: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> list[tuple[str, str, int]]:
    """``(broker name, master address, queue id)`` of every queue consumers of ``topic`` read."""
    reply, body = call(
        namesrv, GET_ROUTEINFO_BY_TOPIC, {"topic": topic}, timeout=timeout, credentials=credentials
    )
    if reply["code"] != SUCCESS:
        raise _failed(reply, f"looking up topic {topic!r} on {namesrv}")
    route = _json(body)
    masters = {
        data["brokerName"]: data["brokerAddrs"][MASTER_ID]
        for data in route.get("brokerDatas", [])
        if MASTER_ID in data.get("brokerAddrs", {})
    }
    return [
        (queues["brokerName"], masters[queues["brokerName"]], queue_id)
        for queues in route.get("queueDatas", [])
        if queues["brokerName"] in masters and int(queues.get("perm", 6)) & 4  # readable
        for queue_id in range(int(queues["readQueueNums"]))
    ]


def topic_queues(
    namesrv: str, topic: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> dict[str, list[int]]:
    """Master broker address → the ids of ``topic``'s read queues on it."""
    out: dict[str, list[int]] = {}
    for _, address, queue_id in read_queues(
        namesrv, topic, timeout=timeout, credentials=credentials
    ):
        out.setdefault(address, []).append(queue_id)
    return out


def start_group_at_end(
    namesrv: str,
    group: str,
    topic: str,
    *,
    timeout: float = 5.0,
    credentials: Credentials | None = None,
) -> int:
    """Give ``group`` a position at the current end of each queue of ``topic`` where it has none.

    A RocketMQ 5 broker positions a consumer group in a queue at the group's first poll of that
    queue, not when it subscribes: at the queue's start while its first message is still in
    memory, otherwise at the queue's *last* message. So a new group can get messages from before
    it subscribed, and miss messages sent between subscribing and its first poll. Committing
    the end of each queue as the group's position when it subscribes makes it get exactly the
    messages sent after that. Queues where the group has a position are left alone. Returns
    how many queues were positioned.
    """
    positioned = 0
    for broker, queue_ids in topic_queues(
        namesrv, topic, timeout=timeout, credentials=credentials
    ).items():
        with Session(broker, timeout=timeout, credentials=credentials) as session:
            for queue_id in queue_ids:
                where = {"consumerGroup": group, "topic": topic, "queueId": str(queue_id)}
                reply, _ = session.call(
                    QUERY_CONSUMER_OFFSET, {**where, "setZeroIfNotFound": "false"}
                )
                if reply["code"] == SUCCESS:
                    continue  # the group has a position in this queue already
                if reply["code"] != QUERY_NOT_FOUND:
                    raise _failed(reply, f"asking {broker} for the position of group {group!r}")
                reply, _ = session.call(GET_MAX_OFFSET, {"topic": topic, "queueId": str(queue_id)})
                if reply["code"] != SUCCESS:
                    raise _failed(reply, f"asking {broker} for the end of {topic!r}:{queue_id}")
                end = reply["extFields"]["offset"]
                commit = {**where, "commitOffset": end}
                reply, _ = session.call(UPDATE_CONSUMER_OFFSET, commit)
                if reply["code"] == SUBSCRIPTION_GROUP_NOT_EXIST:
                    # Not created yet: looking it up creates it with default settings if the
                    # broker creates groups on demand (as it would at the group's first poll).
                    found, _ = session.call(GET_SUBSCRIPTIONGROUP_CONFIG, {"group": group})
                    if found["code"] != SUCCESS:
                        raise GroupMissing(
                            f"broker {broker} has no consumer group {group!r} and creates "
                            "none on demand (autoCreateSubscriptionGroup=false)"
                        )
                    reply, _ = session.call(UPDATE_CONSUMER_OFFSET, commit)
                if reply["code"] != SUCCESS:
                    raise _failed(reply, f"positioning group {group!r} on {topic!r}:{queue_id}")
                positioned += 1
    return positioned


def ensure_user(
    namesrv: str,
    username: str,
    password: str,
    *,
    timeout: float = 5.0,
    credentials: Credentials | None = None,
) -> None:
    """Create (or update the password of) ACL 2.0 user ``username``, a normal user, on every
    master broker, as ``mqadmin createUser``/``updateUser`` do; ``credentials`` are a super
    user's."""
    info = json.dumps(
        {
            "username": username,
            "password": password,
            "userType": "Normal",
            "userStatus": "enable",
        }
    ).encode()
    _upsert(
        namesrv,
        (AUTH_GET_USER, AUTH_UPDATE_USER, AUTH_CREATE_USER),
        {"username": username},
        info,
        f"creating user {username!r}",
        timeout,
        credentials,
    )


def ensure_acl(
    namesrv: str,
    username: str,
    entries: list[tuple[str, list[str], str]],
    *,
    timeout: float = 5.0,
    credentials: Credentials | None = None,
) -> None:
    """Give user ``username`` the ACL 2.0 entries ``(resource, actions, decision)`` (e.g.
    ``("Topic:*", ["Pub", "Sub"], "Allow")``) from any source address on every master broker,
    as ``mqadmin createAcl``/``updateAcl`` do; ``credentials`` are a super user's."""
    subject = f"User:{username}"
    acl = json.dumps(
        {
            "subject": subject,
            "policies": [
                {
                    "policyType": "Custom",
                    "entries": [
                        {"resource": resource, "actions": actions, "decision": decision}
                        for resource, actions, decision in entries
                    ],
                }
            ],
        }
    ).encode()
    _upsert(
        namesrv,
        (AUTH_GET_ACL, AUTH_UPDATE_ACL, AUTH_CREATE_ACL),
        {"subject": subject},
        acl,
        f"setting the ACL of {subject!r}",
        timeout,
        credentials,
    )


def _upsert(
    namesrv: str,
    codes: tuple[int, int, int],
    fields: dict[str, str],
    body: bytes,
    what: str,
    timeout: float,
    credentials: Credentials | None,
) -> None:
    """On every master broker: read the entry ``fields`` name (``codes``: get, update,
    create), then update it if it exists, else create it, with ``body``."""
    get, update, create = codes
    for address in master_brokers(namesrv, timeout=timeout).values():
        with Session(address, timeout=timeout, credentials=credentials) as session:
            found, known = session.call(get, fields)
            # A missing entry is a SUCCESS without a body.
            exists = found["code"] == SUCCESS and known.strip() not in (b"", b"null")
            reply, _ = session.call(update if exists else create, fields, body)
        if reply["code"] != SUCCESS:
            raise _failed(reply, f"{what} on {address}")


def send_probe(
    namesrv: str, topic: str, *, timeout: float = 5.0, credentials: Credentials | None = None
) -> None:
    """Write one message to ``topic`` on every master broker (a start script's readiness check)."""
    for name, address in master_brokers(namesrv, timeout=timeout, credentials=credentials).items():
        fields = {
            "producerGroup": "mqkit_ci_probe",
            "topic": topic,
            "defaultTopic": "TBW102",
            "defaultTopicQueueNums": "4",
            "queueId": "0",
            "sysFlag": "0",
            "bornTimestamp": str(int(time.time() * 1000)),
            "flag": "0",
            "properties": "",
            "reconsumeTimes": "0",
            "unitMode": "false",
            "batch": "false",
        }
        reply, _ = call(
            address, SEND_MESSAGE, fields, b"ready?", timeout=timeout, credentials=credentials
        )
        if reply["code"] != SUCCESS:
            raise _failed(reply, f"sending to {topic!r} on broker {name} ({address})")


def main(argv: list[str]) -> int:
    usage = (
        "usage: admin.py ready|brokers|topic|group|user|acl NAMESRV_HOST:PORT "
        "[NAME [RETRY_MAX_TIMES|PASSWORD|RESOURCE=ACTION,ACTION=DECISION...]|TIMEOUT]\n"
        "(on a cluster with ACL, MQKIT_USERNAME and MQKIT_PASSWORD hold the credentials)"
    )
    if len(argv) < 2 or argv[0] not in {"ready", "brokers", "topic", "group", "user", "acl"}:
        print(usage, file=sys.stderr)
        return 2
    action, namesrv = argv[0], argv[1]
    user = os.environ.get("MQKIT_USERNAME")
    signed = (user, os.environ.get("MQKIT_PASSWORD", "")) if user else None
    try:
        if action == "topic" and len(argv) == 3:
            ensure_topic(namesrv, argv[2], credentials=signed)
        elif action == "group" and len(argv) in (3, 4):
            retries = int(argv[3]) if len(argv) == 4 else 16
            ensure_group(namesrv, argv[2], retry_max_times=retries, credentials=signed)
        elif action == "user" and len(argv) == 4:
            ensure_user(namesrv, argv[2], argv[3], credentials=signed)
        elif action == "acl" and len(argv) >= 4:
            entries = []
            for entry in argv[3:]:  # RESOURCE=ACTION,ACTION=DECISION, e.g. Topic:*=Pub,Sub=Allow
                parts = entry.split("=")
                if len(parts) != 3:
                    raise AdminError(f"{entry!r} is not RESOURCE=ACTION[,ACTION…]=DECISION")
                entries.append((parts[0], parts[1].split(","), parts[2]))
            ensure_acl(namesrv, argv[2], entries, credentials=signed)
        elif action == "brokers" and len(argv) == 2:
            for name, broker_id, address in brokers(namesrv, credentials=signed):
                print(name, broker_id, address)
        elif action == "ready":
            deadline = time.monotonic() + (float(argv[2]) if len(argv) > 2 else 0.0)
            while True:
                try:
                    ensure_topic(namesrv, "mqkit_ready", credentials=signed)
                    send_probe(namesrv, "mqkit_ready", credentials=signed)
                    return 0
                except (OSError, AdminError):
                    if time.monotonic() >= deadline:
                        raise
                time.sleep(0.5)
        else:
            print(usage, file=sys.stderr)
            return 2
    except (OSError, AdminError) as exc:
        print(f"rocketmq admin: {action} on {namesrv}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
