"""``rocketmq+remoting://`` consumer: an orderly clustering push consumer whose native callback
hands each message to ``receive()`` through a :class:`~mqkit.adapter.ReceiveQueue` and waits
until the application settles it (see :mod:`.backend` for the whole picture)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mqkit.adapter import ConsumerBase, Delivery, ReceiveQueue
from mqkit.errors import BrokerUnavailable, ConfigError, MqkitError
from mqkit_rocketmq import admin
from mqkit_rocketmq import wire as layout
from mqkit_rocketmq.remoting import wire
from mqkit_rocketmq.remoting._native import (
    CALLBACK,
    CLUSTERING,
    CONSUME_SUCCESS,
    OK,
    RECONSUME_LATER,
    check,
    claim,
    instance_name,
    lib,
    native_error,
    register_lock,
    text,
    track,
)

if TYPE_CHECKING:
    from mqkit_rocketmq.remoting.backend import Backend

log = logging.getLogger("mqkit.rocketmq.remoting")

#: Seconds a broker keeps a queue locked for an orderly consumer that stopped renewing the lock
#: (``rocketmq.broker.rebalance.lockMaxLiveTime``).
LOCK_LIFETIME = 60.0
#: Seconds ``close()`` waits for a consumer to leave its group.
LEAVE_TIMEOUT = 30.0

_GET_CONSUMER_LIST_BY_GROUP = 38
_UNLOCK_BATCH_MQ = 42



#: The callback of every native push consumer that exists, by handle, until it is destroyed. A
#: consumer the application dropped without closing keeps running natively; if its ctypes
#: callback were collected with it, librocketmq would call freed memory — another consumer's
#: callback placed there since (a message of another group and topic) or nothing (a crash).
_callbacks: dict[int, Any] = {}

class _Positions:
    """Writes an orderly consumer's queue positions to the broker as its messages are settled.

    librocketmq commits a position to its own table when the consume callback returns and
    sends that table to the brokers every 5 s and on shutdown: a consumer process that dies
    would see up to 5 s of acked messages again, and on a clean shutdown it unlocks its queues
    before it writes their positions, so a member that takes a queue over at that moment reads
    an old one. An orderly consumer settles a queue's messages one after the other, so after
    the message at offset *n* the queue's position is *n* + 1: written here, synchronously,
    before ``ack()`` returns. Only for queues the consumer can attribute to a broker (a topic
    on one master broker; the C API does not say which broker a message came from).
    """

    def __init__(self, backend: Backend, group: str, topics: Sequence[str]) -> None:
        self._group = group
        self._timeout = backend.connect_timeout
        self._credentials = backend.credentials
        self._brokers: dict[tuple[str, int], str] = {}
        self._connections: dict[str, admin.Session] = {}
        self._lock = threading.Lock()
        for topic in topics:
            queues = backend.admin(
                functools.partial(admin.read_queues, topic=topic, timeout=self._timeout),
                f"looking up topic {topic!r}",
            )
            if len({name for name, _, _ in queues}) == 1:
                self._brokers.update({(topic, q): address for _, address, q in queues})
            else:
                log.info(
                    "RocketMQ topic %r is on several brokers: positions are written by "
                    "librocketmq every 5 s only",
                    topic,
                )

    def commit(self, topic: str, queue_id: int, offset: int) -> None:
        address = self._brokers.get((topic, queue_id))
        if address is None:
            return
        fields = {
            "consumerGroup": self._group,
            "topic": topic,
            "queueId": str(queue_id),
            "commitOffset": str(offset),
        }
        with self._lock:
            for attempt in (1, 2):
                try:
                    connection = self._connections.get(address)
                    if connection is None:
                        connection = admin.Session(
                            address, timeout=self._timeout, credentials=self._credentials
                        )
                        self._connections[address] = connection
                    reply, _ = connection.call(admin.UPDATE_CONSUMER_OFFSET, fields)
                except (OSError, admin.AdminError) as exc:
                    stale = self._connections.pop(address, None)
                    if stale is not None:
                        stale.close()
                    if attempt == 2:
                        log.warning(
                            "RocketMQ: writing the position of %s queue %d: %s (librocketmq "
                            "writes it within 5 s)",
                            topic,
                            queue_id,
                            exc,
                        )
                    continue
                if reply["code"] != admin.SUCCESS:
                    log.warning(
                        "RocketMQ: writing the position of %s queue %d: %s",
                        topic,
                        queue_id,
                        reply.get("remark"),
                    )
                return

    def close(self) -> None:
        with self._lock:
            for connection in self._connections.values():
                connection.close()
            self._connections.clear()


class _InFlight:
    """One message held by a native consume thread until the application decides."""

    __slots__ = (
        "attempt",
        "decided",
        "delay",
        "offset",
        "outcome",
        "queue_id",
        "seen",
        "template",
        "topic",
    )

    def __init__(self, template: Delivery, topic: str, queue_id: int, offset: int) -> None:
        self.template = template
        self.topic = topic
        self.queue_id = queue_id
        self.offset = offset
        self.attempt = template.attempt
        self.seen = False  # the application received the current attempt
        self.decided = threading.Event()
        self.outcome = ""  # "ack", "drop", "retry"
        self.delay = 0.0


class Consumer(ConsumerBase):
    """A push consumer whose native callback waits for the ``ack``/``nack`` of its message."""

    def __init__(
        self,
        backend: Backend,
        topics: Sequence[str],
        group: str,
        *,
        prefetch: int,
        temporary: bool = False,
    ) -> None:
        super().__init__()
        self._backend = backend
        self._names = {layout.rocketmq_name("topic", t): t for t in topics}
        self._group = layout.rocketmq_name("group", group)
        self._queue: ReceiveQueue[_InFlight] = ReceiveQueue()
        self._closing = threading.Event()
        self._handle: int | None = None
        self._waiting: set[_InFlight] = set()
        self._waiting_lock = threading.Lock()
        self._instance = instance_name("consumer")
        self._client_id: str | None = None
        self._broker_addresses: list[str] | None = None
        self._temporary = temporary
        for topic in self._names:
            backend.ensure_topic(topic, create=temporary)
        if backend.auto_create or temporary:
            backend.admin(
                lambda ns: admin.ensure_group(
                    ns,
                    self._group,
                    timeout=backend.connect_timeout,
                    credentials=backend.credentials,
                ),
                f"creating consumer group {group!r}",
            )
        for topic in self._names:
            self._start_at_end(topic)
        self._positions = _Positions(backend, self._group, list(self._names))
        self._callback = CALLBACK(self._on_message)
        handle = lib.CreatePushConsumer(self._group.encode())
        if not handle:
            raise BrokerUnavailable("librocketmq could not create a push consumer")
        _callbacks[handle] = self._callback
        track(handle, functools.partial(self._shut_down_at_exit, handle))
        try:
            check(lib.SetPushConsumerNameServerAddress(handle, backend.namesrv.encode()), "ns")
            check(lib.SetPushConsumerInstanceName(handle, self._instance.encode()), "instance name")
            check(lib.SetPushConsumerMessageModel(handle, CLUSTERING), "message model")
            if backend.credentials:
                access, secret = backend.credentials
                check(
                    lib.SetPushConsumerSessionCredentials(
                        handle,
                        access.encode(),
                        (secret or "").encode(),
                        backend.settings.channel.encode(),
                    ),
                    "credentials",
                )
            check(lib.SetPushConsumerThreadCount(handle, prefetch), "thread count")
            check(lib.SetPushConsumerMessageBatchMaxSize(handle, 1), "batch size")
            for topic in self._names:
                check(lib.Subscribe(handle, topic.encode(), b"*"), f"subscribing to {topic}")
            with register_lock:
                check(lib.RegisterMessageCallbackOrderly(handle, self._callback), "callback")
                check(lib.StartPushConsumer(handle), "starting the consumer")
        except Exception as exc:
            self._destroy(handle)
            raise backend.error(exc, f"starting consumer group {group!r}") from None
        self._handle = handle
        self._client_id = self._find_client_id()

    def _start_at_end(self, topic: str) -> None:
        """A group new to ``topic`` starts at its current end: every message sent after
        ``consumer()`` returns is the group's, however late the rebalance assigns the queues."""
        try:
            self._backend.admin(
                lambda ns: admin.start_group_at_end(
                    ns,
                    self._group,
                    topic,
                    timeout=self._backend.connect_timeout,
                    credentials=self._backend.credentials,
                ),
                f"positioning group {self._group!r} on topic {topic!r}",
            )
        except BrokerUnavailable as exc:
            if "code 26" in str(exc) and not self._backend.auto_create:
                # The group does not exist yet (the broker creates it on the consumer's first
                # heartbeat): librocketmq's own CONSUME_FROM_LAST_OFFSET applies.
                log.debug("RocketMQ: %s", exc)
                return
            if "code 17" in str(exc) or "No topic route" in str(exc):
                raise ConfigError(
                    f"topic {self._names[topic]!r} ({topic!r}) does not exist on the "
                    f"{self._backend.server}; RocketMQ topics are created by an administrator "
                    f"(mqadmin updateTopic -n NAMESRV:9876 -c CLUSTER -t {topic}), or let mqkit "
                    "create them with the URL option auto_create=true"
                ) from None
            raise

    def _brokers(self) -> list[str]:
        if self._broker_addresses is None:
            timeout = self._backend.connect_timeout
            brokers = self._backend.admin(
                lambda ns: admin.master_brokers(ns, timeout=timeout), "listing the brokers"
            )
            self._broker_addresses = list(brokers.values())
        return self._broker_addresses

    def _group_members(self) -> Iterator[list[str]]:
        """The client ids each broker lists as members of this consumer's group."""
        timeout = self._backend.connect_timeout
        for address in self._brokers():
            reply, body = admin.call(
                address,
                _GET_CONSUMER_LIST_BY_GROUP,
                {"consumerGroup": self._group},
                timeout=timeout,
                credentials=self._backend.credentials,
            )
            listed = json.loads(body) if reply["code"] == admin.SUCCESS and body else {}
            yield [str(client_id) for client_id in listed.get("consumerIdList", [])]

    def _find_client_id(self) -> str | None:
        """This consumer's client id as the brokers know it (``pid-ip@instance``)."""
        try:
            for members in self._group_members():
                for client_id in members:
                    if client_id.endswith("@" + self._instance):
                        return client_id
        except (OSError, ValueError, MqkitError, admin.AdminError) as exc:
            log.warning("RocketMQ: cannot find the client id of %s: %s", self._instance, exc)
        return None

    def _unlock_queues(self) -> None:
        """Release this consumer's queue locks on the brokers.

        librocketmq 1.0.1 leaves the first queue of each broker locked when it shuts down (its
        ``Rebalance::unlockAll`` never adds that queue to the unlock request): the next
        consumer of the group could not consume that queue until the broker's lock expires
        (60 s). Unlocking is per client id, so other members' locks are untouched.
        """
        if self._client_id is None:
            return
        timeout = self._backend.connect_timeout
        topics = [*self._names, f"%RETRY%{self._group}"]
        per_broker: dict[str, list[dict[str, Any]]] = {}
        try:
            for topic in topics:
                try:
                    queues = self._backend.admin(
                        functools.partial(admin.read_queues, topic=topic, timeout=timeout),
                        f"looking up topic {topic!r}",
                    )
                except BrokerUnavailable:
                    continue  # e.g. no retry topic
                for name, address, queue_id in queues:
                    per_broker.setdefault(address, []).append(
                        {"topic": topic, "brokerName": name, "queueId": queue_id}
                    )
            for address, mqs in per_broker.items():
                body = json.dumps(
                    {
                        "consumerGroup": self._group,
                        "clientId": self._client_id,
                        "onlyThisBroker": False,
                        "mqSet": mqs,
                    }
                ).encode()
                reply, _ = admin.call(
                    address,
                    _UNLOCK_BATCH_MQ,
                    body=body,
                    timeout=timeout,
                    credentials=self._backend.credentials,
                )
                if reply["code"] != admin.SUCCESS:
                    log.warning("RocketMQ: unlocking queues on %s: %s", address, reply)
        except (OSError, MqkitError, admin.AdminError) as exc:
            log.warning("RocketMQ: unlocking the queues of %s: %s", self._client_id, exc)

    def _on_message(self, _consumer: int, message: int) -> int:
        """Native consume thread: hand the message over and wait for its fate."""
        try:
            if self._closing.is_set():
                return RECONSUME_LATER
            item = _InFlight(
                wire.from_native(message, self._names),
                text(lib.GetMessageTopic(message)),
                int(lib.GetMessageQueueId(message)),
                int(lib.GetMessageQueueOffset(message)),
            )
            item.attempt += self._backend.seen_before(self._key(item))
            with self._waiting_lock:
                self._waiting.add(item)
            try:
                return self._hand_over(item)
            finally:
                with self._waiting_lock:
                    self._waiting.discard(item)
        except Exception:
            log.exception("RocketMQ consume callback failed; the message will be redelivered")
            return RECONSUME_LATER

    def _hand_over(self, item: _InFlight) -> int:
        while True:
            if self._closing.is_set():  # checked after joining _waiting: close() wakes it
                return RECONSUME_LATER
            self._queue.put(item)
            item.decided.wait()
            if item.outcome in ("ack", "drop"):  # settled, even if close() came right after
                return CONSUME_SUCCESS
            if self._closing.is_set():
                return RECONSUME_LATER
            # Orderly: RocketMQ would hand this consumer the same message again (and keep the
            # rest of its queue back); doing it here keeps the count and honours the delay.
            if self._closing.wait(item.delay):
                return RECONSUME_LATER
            item.attempt += 1
            item.seen = False
            item.outcome = ""
            item.decided.clear()

    def receive(self, timeout: float | None) -> Delivery | None:
        item = self._queue.get(timeout)
        if item is None or self._closing.is_set():
            return None
        item.seen = True
        return dataclasses.replace(item.template, attempt=item.attempt, handle=item)

    def _key(self, item: _InFlight) -> tuple[str, str, int, int]:
        return (self._group, item.topic, item.queue_id, item.offset)

    def _settle(self, delivery: Delivery, outcome: str, delay: float = 0.0) -> None:
        item: _InFlight = delivery.handle
        if outcome != "retry" and not self._closing.is_set():
            self._positions.commit(item.topic, item.queue_id, item.offset + 1)
        item.delay = delay
        item.outcome = outcome
        item.decided.set()

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, "ack")

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        # Without requeue the group drops it: consumed, as far as RocketMQ is concerned.
        self._settle(delivery, "retry" if requeue else "drop", max(0.0, delay))

    def _close(self) -> None:
        self._release_callbacks()
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._leave(handle)
            self._unlock_queues()
        self._positions.close()
        if self._temporary:
            self._backend.delete_temporary(self._group, list(self._names))

    def _shut_down_at_exit(self, handle: int) -> None:
        """At exit, for a consumer never closed: let its callbacks return, then shut it down
        in this thread (librocketmq's shutdown waits for the callbacks)."""
        self._release_callbacks()
        self._destroy(handle)

    def _release_callbacks(self) -> None:
        self._closing.set()  # waiting callbacks answer RECONSUME_LATER: nothing is committed
        with self._waiting_lock:
            waiting = list(self._waiting)
        for item in waiting:
            if item.outcome in ("", "retry"):
                # Delivered again by RocketMQ with reconsume_times unchanged: remember what
                # the application saw, for the next consumer of this backend.
                seen = item.attempt - item.template.attempt + (1 if item.seen else 0)
                if seen:
                    self._backend.remember_seen(self._key(item), seen)
            item.decided.set()
        self._queue.close()

    def _leave(self, handle: int) -> None:
        """Shut the native consumer down; return once it has left the group.

        librocketmq's shutdown unlocks the queues, writes their positions and unregisters
        from the brokers within milliseconds, but if a rebalance is under way (another member
        just left) it then waits for the queues' outstanding long polls, which a broker holds
        up to 15-20 s. That tail runs in a thread of its own (not a daemon: the interpreter
        waits for it at exit); ``close()`` waits only until the brokers no longer list this
        consumer in its group.
        """
        done = threading.Event()

        def shut_down() -> None:
            try:
                self._destroy(handle)
            finally:
                done.set()

        threading.Thread(target=shut_down, name="mqkit-rocketmq-shutdown").start()
        deadline = time.monotonic() + LEAVE_TIMEOUT
        while not done.wait(0.02):
            if self._client_id is not None and not self._listed():
                return
            if time.monotonic() > deadline:
                log.warning("RocketMQ consumer %s: shutdown still running", self._instance)
                return

    def _listed(self) -> bool:
        """Whether a broker still lists this consumer as a member of its group."""
        try:
            for members in self._group_members():
                if self._client_id in members:
                    return True
        except (OSError, ValueError, MqkitError, admin.AdminError) as exc:
            log.debug("RocketMQ: asking for the members of %s: %s", self._group, exc)
            return True
        return False

    def _destroy(self, handle: int) -> None:
        if claim(handle):
            _shut_down_native(handle)


def _shut_down_native(handle: int) -> None:
    """Shut a native push consumer down and destroy it (once: see ``_native.claim``)."""
    status = lib.ShutdownPushConsumer(handle)
    if status != OK:
        log.warning("RocketMQ consumer shutdown: %s", native_error())
    with register_lock:
        lib.UnregisterMessageCallbackOrderly(handle)
        lib.DestroyPushConsumer(handle)
    _callbacks.pop(handle, None)
