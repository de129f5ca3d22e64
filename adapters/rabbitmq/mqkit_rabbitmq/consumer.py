"""The consumer: one member of a group, with its own connection driven by its own I/O thread.

Per topic and group there is a modulus-hash exchange (RabbitMQ's ``rabbitmq_sharding``
plugin) bound to the topic's exchange, and ``1 + P`` durable quorum queues: the *shared* queue
(not bound; every member consumes it, so its consumer count is the group's size) and ``P``
*partition* queues bound to the hash exchange. Any routing key, from mqkit or from any other
publisher, lands on one partition, the same one every time, broker restarts included (mqkit
routes by the key, unkeyed messages by their id). An exchange that
exists with another type (direct, fanout, headers) is bound to as it is, by the consumer's
``binding_keys``. A partition is consumed by at most one member at a time:
the member that holds its *lock*, an exclusive (connection-owned) queue. Members count each
other through the shared queue's consumer count and take ``ceil(P / members)`` partitions
each; a member with too many hands the surplus over only after every message it took from
that partition is settled, so one key is never processed by two members at once. Locks of a
member that dies vanish with its connection, and its unacked messages return to the front of
the quorum queues (a delivery limit is set, see ``DELIVERY_LIMIT``), so the next owner
continues in order.

With the consumer option ``queue`` none of this exists: the members consume that existing queue
as it is, competing for its messages. With ``partitions=0`` the shared queue is the group's one
queue, bound to the topic's exchange directly: members compete for it, no hash exchange, no
partitions, no locks (fewer hops for the broker; no key order across members).

pika is not thread-safe, so one thread at a time *drives* the ``BlockingConnection`` (holds
``_io``). While the application is busy receiving and acking, that is the application's own
thread: ``receive()`` on an empty buffer polls the connection itself and ``ack()`` writes the ack
itself, like a plain pika loop, with no hand-over to another thread per message. When the
application has not touched the consumer for ``SLICE``, the I/O thread drives instead
(heartbeats, prefetching, rebalancing), and it alone connects and reconnects. A thread that needs
the connection while another drives it wakes that one with ``add_callback_threadsafe``.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.adapters.blocking_connection
import pika.channel
import pika.exceptions
import pika.spec
from pika.exchange_type import ExchangeType

from mqkit.adapter import ConsumerBase, Deadline, Delivery
from mqkit.errors import BrokerUnavailable, ConfigError, MqkitError
from mqkit.message import new_message_id

from .connection import ACCESS_REFUSED, CoalescingConnection, describe, open_blocking, refused
from .settings import Endpoint, Settings
from .wire import (
    CONTROL_EXCHANGE,
    ENABLE_PLUGIN,
    HASH_EXCHANGE_TYPE,
    ONE_QUEUE_REFUSAL,
    PLUGIN,
    check_topic,
    decode,
    group_base,
    hash_exchange,
    lock_queue,
    partition_queue,
    queue_arguments,
)

log = logging.getLogger("mqkit.rabbitmq.consumer")

BlockingChannel = pika.adapters.blocking_connection.BlockingChannel

#: How long one ``process_data_events`` slice lasts; bounds the latency of close and polls.
#: Also how long the application's thread keeps the connection after its last call.
SLICE = 0.1
#: Topics whose membership one periodic rebalance checks (round robin), so a consumer of
#: hundreds of topics does not spend its time in ``queue_declare`` round trips; signalled
#: topics are checked at once whatever their number.
CHECKS_PER_TICK = 8
#: Seconds between a member's "alive" signals for each of its topics (sent when the topic's
#: membership is checked); a member not heard from for three sweeps over its topics (at least
#: MEMBER_TIMEOUT seconds) no longer counts.
HEARTBEAT = 1.0
#: Times setting up is tried again when the broker closes the connection with 541
#: INTERNAL_ERROR: RabbitMQ 3.10 does when a consumer subscribes to a quorum queue whose Raft
#: server is not running yet (seen on a loaded machine), and a second try finds it running.
SETUP_RETRIES = 3
MEMBER_TIMEOUT = 3.0


#: How RabbitMQ refuses to declare an exchange that exists with other settings.
_INEQUIVALENT = re.compile(r"inequivalent arg '(\w+)' for exchange '(.*)' in vhost")
_CURRENT_TYPE = re.compile(r"current is '([^']*)'")


def _noop() -> None:
    """Wakes whoever is polling the connection (``add_callback_threadsafe``)."""


@dataclass(frozen=True, slots=True)
class _Handle:
    epoch: int
    tag: int
    queue: str
    partition: bool


@dataclass
class _Block:
    """A key of a partition whose nacked message is on its way back from the broker.

    Quorum queues hand returned messages out again in the order they were returned, ahead
    of the rest of the queue. So until every nacked message of the key is back, later
    messages of the key are withheld and returned behind them (``expected`` counts ids on
    their way back), once the user holds no message of the key: its nacks come first. A
    returned message that overtook an earlier one of its key (nacked later) goes round again.
    """

    expected: Counter[str] = field(default_factory=Counter)
    withheld: list[Delivery] = field(default_factory=list)


def _internal_error(exc: BaseException) -> bool:
    """Did the broker close the connection with 541 INTERNAL_ERROR (a broker-side crash)?"""
    cause = exc.__cause__
    return isinstance(cause, pika.exceptions.ConnectionClosedByBroker) and cause.reply_code == 541


@dataclass
class _Topic:
    topic: str
    base: str
    hashed: str
    shared: str
    partitions: list[str]
    locks: list[str]
    #: partition index -> consumer tag, for partitions this member consumes
    owned: dict[int, str] = field(default_factory=dict)
    #: partitions being handed over: cancelled, waiting for their messages to be settled
    draining: set[int] = field(default_factory=set)
    #: when this member last said it is alive for this topic (time.monotonic())
    beat: float = 0.0


class Consumer(ConsumerBase):
    """One member of ``group`` on its own connection; ``__init__`` returns once its queues,
    bindings and shared-queue consumer exist."""

    def __init__(
        self, endpoint: Endpoint, settings: Settings, topics: tuple[str, ...], group: str
    ) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._settings = settings
        self._group = group
        self._queue = settings.queue
        self._binding_keys = [k.strip() for k in settings.binding_keys.split(",") if k.strip()]
        if self._queue and len(topics) != 1:
            raise ConfigError(
                f"option queue={self._queue!r} names one existing queue: give one topic, "
                f"not {len(topics)}"
            )
        # A consumer of an existing queue, or of a group's one queue, has no partitions: its
        # members compete.
        partitions = self._partitions = 0 if self._queue else settings.partitions
        if not self._queue:
            for topic in topics:
                check_topic(topic)
        self._topics: list[_Topic] = []
        for topic in topics:
            base = group_base(topic, group)
            self._topics.append(
                _Topic(
                    topic=topic,
                    base=base,
                    hashed=hash_exchange(base),
                    shared=self._queue or base,
                    partitions=[partition_queue(base, j) for j in range(partitions)],
                    locks=[lock_queue(base, j) for j in range(partitions)],
                )
            )
        #: exchange type of each topic found at connect: "topic" when mqkit declared it
        self._kinds: dict[str, str] = {}
        self._offset = random.randrange(partitions) if partitions else 0
        # shared with user threads, guarded by _cv
        self._cv = threading.Condition()
        self._buffer: deque[Delivery] = deque()
        self._pending: Counter[str] = Counter()
        self._draining_queues: set[str] = set()
        self._blocked: dict[tuple[str, str], _Block] = {}
        self._held: Counter[tuple[str, str]] = Counter()  # keyed messages the user holds
        self._uncount: Counter[tuple[str, str]] = Counter()
        #: (queue, message id) -> when this member first received it: a message's place in
        #: its queue, so messages of a key come back in queue order whatever the nack order.
        self._order: dict[tuple[str, str], int] = {}
        self._arrivals = 0
        self._cmds: list[tuple[str, int]] = []
        self._epoch = 0
        self._error: MqkitError | None = None
        self._down_since: float | None = None
        self._cause = ""
        #: the connection once set up, for every thread; None while (re)connecting
        self._live: pika.BlockingConnection | None = None
        #: an error a thread other than the I/O thread got from the live connection
        self._broken: BaseException | None = None
        # whoever holds _io may use pika: the connection, its channels, the state below
        self._io = threading.Lock()
        self._last_user = 0.0  # when an application thread last released _io
        self._waiting_users = 0  # application threads waiting for _io
        self._kick = threading.Event()  # wakes the I/O thread from its idle wait
        self._next_tick = 0.0
        self._conn: pika.BlockingConnection | None = None
        self._host = 0
        self._ctl: BlockingChannel | None = None
        self._data: BlockingChannel | None = None
        self._lockch: BlockingChannel | None = None
        self._tags: dict[str, tuple[_Topic, str, bool]] = {}
        self._signalled: set[str] = set()  # bases of topics a control signal named
        #: (topic base, member) -> when that other member last signalled (time.monotonic())
        self._seen: dict[tuple[str, bytes], float] = {}
        self._sweep = 0  # where the periodic rebalance continues
        self._by_base = {st.base: st for st in self._topics}
        self._member = new_message_id().encode()  # tells this member's signals from others'
        self._ready = threading.Event()
        self._first_error: MqkitError | None = None
        self._thread = threading.Thread(
            target=self._run, name="mqkit-rabbitmq-consumer", daemon=True
        )
        self._thread.start()
        # Setting up takes a few round trips per queue: allow for consumers of many topics.
        budget = (
            (endpoint.connect_timeout + 1.0) * len(endpoint.hosts)
            + 30.0
            + 0.1 * len(topics) * (1 + partitions)
        )
        if not self._ready.wait(budget):
            self.close()
            raise BrokerUnavailable(
                f"{endpoint.where()} did not finish setting up group {group!r} within {budget} s"
            )
        error = self._startup_error()
        if error is not None:
            self._thread.join(5)
            raise error

    def _startup_error(self) -> MqkitError | None:
        """What the I/O thread failed with while setting up (a method: it is set by that
        thread, after ``__init__`` set it to ``None``)."""
        return self._first_error

    # -- user side -----------------------------------------------------------------------------

    def receive(self, timeout: float | None) -> Delivery | None:
        deadline: Deadline | None = None  # made only when nothing is buffered
        while True:
            with self._cv:
                if self._closed:
                    return None
                if self._buffer:
                    return self._take()
                if self._error is not None:
                    raise self._error
                if (
                    self._down_since is not None
                    and time.monotonic() - self._down_since > self._settings.reconnect_timeout
                ):
                    raise BrokerUnavailable(
                        f"{self._endpoint.where(self._host)} is unavailable: {self._cause} (no "
                        "connection for more than "
                        f"reconnect_timeout={self._settings.reconnect_timeout} s)"
                    )
                if deadline is None:
                    deadline = Deadline(timeout)
                elif deadline.expired:
                    return None
                wait = deadline.remaining(0.5)
                assert wait is not None
                conn, epoch = self._live, self._epoch
                if conn is None or self._broken is not None:
                    if wait <= 0:
                        return None
                    self._cv.wait(wait)  # (re)connecting: the I/O thread notifies
                    continue
            # Nothing buffered: poll the connection on this thread (no hand-over); at least
            # once, so receive(timeout=0) gets what already arrived on the socket.
            self._drive(conn, epoch, min(wait, SLICE))
            if wait <= 0:
                with self._cv:
                    return self._take() if self._buffer and not self._closed else None

    def receive_nowait(self) -> Delivery | None:
        """A delivery already in the buffer, or ``None``. ``_cv`` is never held during
        connection I/O, so taking it does not wait on the network."""
        with self._cv:
            return self._take() if self._buffer and not self._closed else None

    def ack_nowait(self, delivery: Delivery) -> bool:
        """:meth:`ack` when the connection's lock is free (nobody polls it): the ack is then
        written to the socket before this returns, as ``ack()`` does. ``False`` when a thread
        holds the lock (a receiving thread polling): waiting for it would block the caller."""
        if not self._io.acquire(blocking=False):
            return False
        try:
            queued = self._queue_ack(delivery)
            if queued is not None and self._writable(*queued):
                try:
                    self._run_cmds()
                except Exception as exc:  # anything from pika: the I/O thread reconnects
                    self._fail(queued[0], exc)
        finally:
            self._release_io()
        return True

    def _take(self) -> Delivery:
        """Next buffered delivery; partitions being handed over go first, to finish quickly."""
        delivery = None
        if self._draining_queues:
            for index, candidate in enumerate(self._buffer):
                if candidate.handle.queue in self._draining_queues:
                    del self._buffer[index]
                    delivery = candidate
                    break
        if delivery is None:
            delivery = self._buffer.popleft()
        if delivery.handle.partition and delivery.key is not None:
            self._held[(delivery.handle.queue, delivery.key)] += 1
        return delivery

    def _settled(self, delivery: Delivery, *, requeued: bool = False) -> tuple[str, str] | None:
        """With the lock held: bookkeeping for a delivery the user settles."""
        handle: _Handle = delivery.handle
        self._pending[handle.queue] -= 1
        if not handle.partition or delivery.key is None:
            return None
        spot = (handle.queue, delivery.key)
        if not requeued:
            self._order.pop((handle.queue, delivery.id), None)
        self._held[spot] -= 1
        if self._held[spot] <= 0:
            del self._held[spot]
        return spot

    def _flush_withheld(self, spot: tuple[str, str]) -> None:
        """With the lock held: return withheld messages once the user holds none of the key."""
        block = self._blocked.get(spot)
        if block is None or self._held[spot] > 0:
            return
        for other in block.withheld:
            block.expected[other.id] += 1
            self._uncount[(spot[0], other.id)] += 1
            self._pending[spot[0]] -= 1
            self._cmds.append(("nack", other.handle.tag))
        block.withheld.clear()
        if not block.expected:
            del self._blocked[spot]

    def ack(self, delivery: Delivery) -> None:
        queued = self._queue_ack(delivery)
        if queued is not None:
            self._write(*queued)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Every ``ack`` of ``deliveries``, written to the socket in one go."""
        queued = None
        for delivery in deliveries:
            queued = self._queue_ack(delivery) or queued
        if queued is not None:
            self._write(*queued)

    def _queue_ack(self, delivery: Delivery) -> tuple[pika.BlockingConnection, int] | None:
        """Queue the ack of ``delivery``; the connection (and its epoch) to write it on, or
        ``None`` when there is nothing to write (settled late, or no connection now)."""
        with self._cv:
            if not self._current(delivery):
                return None
            spot = self._settled(delivery)
            self._cmds.append(("ack", delivery.handle.tag))
            if spot is not None:
                self._flush_withheld(spot)
            conn, epoch = self._live, self._epoch
        return None if conn is None else (conn, epoch)

    def _writable(self, conn: pika.BlockingConnection, epoch: int) -> bool:
        """With ``_io`` held: is ``conn`` still the live, unbroken connection of ``epoch``?"""
        return self._live is conn and self._epoch == epoch and self._broken is None

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        # delay: RabbitMQ has no per-message delay without plugins (delayed_redelivery=False);
        # the message is requeued at once and mqkit's retry helpers provide delays.
        handle: _Handle = delivery.handle
        with self._cv:
            if not self._current(delivery):
                return
            spot = self._settled(delivery, requeued=requeue)
            if not requeue:
                self._cmds.append(("reject", handle.tag))
            else:
                self._cmds.append(("nack", handle.tag))
                if spot is not None:
                    # Later messages of this key must come back behind this one.
                    block = self._blocked.setdefault(spot, _Block())
                    block.expected[delivery.id] += 1
                    keep: deque[Delivery] = deque()
                    for other in self._buffer:
                        if other.handle.queue == spot[0] and other.key == spot[1]:
                            block.withheld.append(other)
                        else:
                            keep.append(other)
                    self._buffer = keep
            if spot is not None:
                self._flush_withheld(spot)
            conn, epoch = self._live, self._epoch
        self._write(conn, epoch)

    def _current(self, delivery: Delivery) -> bool:
        """With the lock held: is the delivery from the live connection? Else the broker has
        taken it back already and will deliver it again."""
        if delivery.handle.epoch == self._epoch:
            return True
        log.warning(
            "message %s on %r was settled after its connection to RabbitMQ was lost; the "
            "broker delivers it again",
            delivery.id,
            delivery.topic,
        )
        return False

    def _write(self, conn: pika.BlockingConnection | None, epoch: int) -> None:
        """Write the queued acks/nacks to the socket on this thread before returning, so an
        ack that returned is not lost if this process dies right after. Commands queued for a
        connection that is gone are moot: the broker delivers those messages again."""
        if conn is None:
            return
        self._acquire_io(conn)
        try:
            if not self._writable(conn, epoch):
                return
            self._run_cmds()
        except Exception as exc:  # anything from pika: the I/O thread reconnects
            self._fail(conn, exc)
        finally:
            self._release_io()

    def _drive(self, conn: pika.BlockingConnection, epoch: int, seconds: float) -> None:
        """Poll the connection on the calling application thread for up to ``seconds``."""
        self._acquire_io(conn)
        try:
            if not self._writable(conn, epoch):
                return
            conn.process_data_events(time_limit=seconds)  # type: ignore[arg-type]
            self._service()
        except Exception as exc:  # anything from pika: the I/O thread reconnects
            self._fail(conn, exc)
        finally:
            self._release_io()

    def _acquire_io(self, conn: pika.BlockingConnection) -> None:
        """Take the connection from whoever drives it, waking it if it is polling."""
        if self._io.acquire(blocking=False):
            return
        with self._cv:
            self._waiting_users += 1
        try:
            try:
                conn.add_callback_threadsafe(_noop)
            except Exception:  # closing: the holder lets go by itself
                log.debug("consumer wake-up dropped")
            self._io.acquire()
        finally:
            with self._cv:
                self._waiting_users -= 1

    def _release_io(self) -> None:
        self._last_user = time.monotonic()
        self._io.release()

    def _fail(self, conn: pika.BlockingConnection, exc: BaseException) -> None:
        """With ``_io`` held, on an application thread: hand a broken connection to the I/O
        thread, which reconnects."""
        with self._cv:
            if self._live is conn and self._broken is None:
                self._broken = exc
        self._kick.set()

    def _close(self) -> None:
        # ``_closed`` is set (ConsumerBase.close): wake whoever waits, the I/O thread gives
        # the connection up, and RabbitMQ returns what was not acked to the group.
        with self._cv:
            self._cv.notify_all()
            conn = self._conn
        self._kick.set()
        if conn is not None:
            try:
                conn.add_callback_threadsafe(_noop)
            except Exception:  # already closing: the I/O loop notices _closed anyway
                log.debug("consumer wake-up on close dropped")
        if threading.current_thread() is not self._thread:
            self._thread.join(10)

    # -- I/O thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._closed:
            try:
                self._connect()
            except MqkitError as exc:
                self._teardown()
                if not self._ready.is_set():
                    if _internal_error(exc) and failures < SETUP_RETRIES:
                        failures += 1
                        self._backoff(failures, str(exc))
                        continue
                    self._first_error = exc
                    self._ready.set()
                    return
                failures += 1
                self._backoff(failures, str(exc))
                continue
            if self._ready.is_set():
                log.warning(
                    "consumer of group %r reconnected to %s",
                    self._group,
                    self._endpoint.where(self._host),
                )
            self._ready.set()
            failures = 0
            try:
                self._loop()
            except Exception as exc:  # anything from pika: the connection is no longer usable
                if not self._closed:
                    self._cause = describe(exc)
                    log.warning(
                        "consumer of group %r lost %s (%s); reconnecting",
                        self._group,
                        self._endpoint.where(self._host),
                        self._cause,
                    )
                    log.debug("connection failure", exc_info=True)
            self._teardown()
            if not self._closed:
                failures += 1
                self._backoff(failures, self._cause)

    def _backoff(self, failures: int, cause: str) -> None:
        self._host += 1
        self._cause = cause
        with self._cv:
            if self._down_since is None:
                self._down_since = time.monotonic()
            self._cv.wait_for(lambda: self._closed, min(0.2 * 2 ** min(failures, 4), 2.0))

    def _connect(self) -> None:
        conn, self._host = open_blocking(self._endpoint, self._host)
        with self._cv:
            self._conn = conn
        try:
            ctl = conn.channel()
            self._ctl = ctl
            ctl.exchange_declare(
                CONTROL_EXCHANGE, exchange_type=ExchangeType("direct"), durable=True
            )
            signals = ctl.queue_declare("", exclusive=True, auto_delete=True).method.queue
            assert signals is not None
            ctl.basic_consume(signals, self._on_signal, auto_ack=True)
            data = conn.channel()
            data.basic_qos(prefetch_count=self._settings.prefetch)
            data.add_on_cancel_callback(self._on_broker_cancel)
            self._data = data
            self._lockch = conn.channel()
            if self._queue:
                self._consume_existing(ctl, data)
            else:
                self._find_kinds(conn)
                self._set_up_groups(ctl, data, signals)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404 and self._queue:
                raise ConfigError(
                    f"{self._endpoint.where(self._host)} has no queue {self._queue!r} (option "
                    f"queue= consumes an existing queue; it declares nothing): {exc.reply_text}"
                ) from exc
            if exc.reply_code == 406 and ONE_QUEUE_REFUSAL in str(exc.reply_text):
                modes = ("partitions=0", "partitions >= 1")
                mine, theirs = modes if not self._partitions else modes[::-1]
                raise ConfigError(
                    f"group {self._group!r} of {self._topic_list()} was created with "
                    f"{theirs} and this consumer has {mine}: every member of a group uses "
                    "the same mode (give this one the group's, or use a new group name)"
                ) from exc
            if exc.reply_code == ACCESS_REFUSED:
                raise refused(
                    self._endpoint.where(self._host),
                    f"setting up group {self._group!r} of {self._topic_list()}",
                    exc,
                ) from exc
            raise ConfigError(
                f"{self._endpoint.where(self._host)} refused to set up group {self._group!r} of "
                f"{self._topic_list()}: {exc.reply_code} {exc.reply_text} "
                "(an exchange or queue of that name exists with other settings)"
            ) from exc
        except pika.exceptions.ConnectionClosedByBroker as exc:
            if HASH_EXCHANGE_TYPE in str(exc.reply_text):
                raise ConfigError(
                    f"{self._endpoint.where(self._host)} does not know the exchange type "
                    f"{HASH_EXCHANGE_TYPE!r} that mqkit's groups use: enable RabbitMQ's "
                    f"{PLUGIN} plugin (it ships with the broker): `{ENABLE_PLUGIN}`"
                ) from exc
            raise BrokerUnavailable(
                f"{self._endpoint.where(self._host)} is unavailable: {describe(exc)}"
            ) from exc
        except MqkitError:
            raise
        except Exception as exc:
            raise BrokerUnavailable(
                f"{self._endpoint.where(self._host)} is unavailable: {describe(exc)}"
            ) from exc
        self._next_tick = time.monotonic() + self._settings.rebalance_interval
        with self._cv:
            self._down_since = None
            self._live = conn  # from now on any thread may drive it (holding _io)
            self._cv.notify_all()

    def _consume_existing(self, ctl: BlockingChannel, data: BlockingChannel) -> None:
        """Option ``queue``: check the queue exists (declaring nothing) and consume it."""
        [st] = self._topics
        ctl.queue_declare(st.shared, passive=True)
        tag = data.basic_consume(st.shared, self._on_message)
        self._tags[tag] = (st, st.shared, False)

    def _find_kinds(self, conn: pika.BlockingConnection) -> None:
        """Declare each topic's exchange (a topic exchange), learning which ones exist with
        another type or other settings: those are used as they are. The declarations go out
        without waiting, on a channel of their own; a refusal closes that channel and names the
        exchange, and the declarations before it succeeded (a channel runs them in order)."""
        self._kinds = {}
        pending = [st.topic for st in self._topics]
        topic_type = ExchangeType("topic")
        while pending:
            channel = conn.channel()
            try:
                nowait: pika.channel.Channel = channel._impl  # type: ignore[attr-defined]
                for topic in pending[:-1]:
                    nowait.exchange_declare(topic, exchange_type=topic_type, durable=True)
                channel.exchange_declare(pending[-1], exchange_type=topic_type, durable=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                found = _INEQUIVALENT.search(str(exc.reply_text))
                if exc.reply_code != 406 or found is None or found.group(2) not in pending:
                    raise
                index = pending.index(found.group(2))
                for topic in pending[:index]:
                    self._kinds[topic] = "topic"
                current = _CURRENT_TYPE.search(str(exc.reply_text))
                # RabbitMQ compares the type first: another argument differing means a topic
                # exchange with other flags (e.g. not durable).
                kind = current.group(1) if found.group(1) == "type" and current else "topic"
                self._kinds[pending[index]] = f"existing {kind}"
                pending = pending[index + 1 :]
                continue
            for topic in pending:
                self._kinds[topic] = "topic"
            pending = []
            channel.close()

    def _bindings(self, topic: str) -> list[tuple[str, dict[str, Any] | None]]:
        """How the group's hash exchange binds to ``topic``'s exchange: (routing key,
        arguments) pairs, from the exchange's type and the ``binding_keys`` option."""
        kind = self._kinds.get(topic, "topic").removeprefix("existing ")
        if kind == "fanout":
            return [("", None)]
        if kind == "headers":
            return [("", {"x-match": "all"})]  # no header to match: every message
        if self._binding_keys:
            return [(key, None) for key in self._binding_keys]
        if kind == "direct":
            raise ConfigError(
                f"exchange {topic!r} exists as a direct exchange: tell the consumer which "
                f"routing keys group {self._group!r} takes, e.g. "
                f"broker.consumer({topic!r}, group={self._group!r}, binding_keys='key1,key2')"
            )
        return [("#", None)]  # a topic exchange: every routing key

    def _set_up_groups(self, ctl: BlockingChannel, data: BlockingChannel, signals: str) -> None:
        """Declare and consume each topic's group topology."""
        if not self._partitions:
            self._set_up_one_queue_groups(ctl, data)
            return
        args = queue_arguments(self._settings.queue_expires)
        # A topic takes 2 + P declarations and 2 + P bindings. They go out without waiting for
        # each answer (AMQP no-wait, on pika's underlying channel: the blocking one always
        # waits); the channel runs them in order, and a final declaration that does wait
        # reports the first refusal (the broker closes the channel on it). One round trip per
        # topic is what makes hundreds of topics practical. Each topic's queues are consumed
        # right after they are declared, so none of them reaches queue_expires while later
        # topics are still being set up.
        nowait: pika.channel.Channel = ctl._impl  # type: ignore[attr-defined]
        for st in self._topics:
            bindings = self._bindings(st.topic)
            # The shared queue first: a group of the other mode refuses it (its delivery limit
            # differs) before anything else of this topic is declared or bound.
            nowait.queue_declare(st.shared, durable=True, arguments=args)
            # auto_delete: the hash exchange goes once its partition queues do (queue_expires)
            nowait.exchange_declare(
                st.hashed,
                exchange_type=HASH_EXCHANGE_TYPE,  # type: ignore[arg-type]
                durable=True,
                auto_delete=True,
            )
            for name in st.partitions:
                nowait.queue_declare(name, durable=True, arguments=args)
                nowait.queue_bind(name, st.hashed, routing_key="1")  # the key is not used
            for key, arguments in bindings:
                nowait.exchange_bind(st.hashed, st.topic, routing_key=key, arguments=arguments)
            nowait.queue_bind(signals, CONTROL_EXCHANGE, routing_key=st.base)
            ctl.queue_declare(st.shared, durable=True, arguments=args)
            tag = data.basic_consume(st.shared, self._on_message)
            self._tags[tag] = (st, st.shared, False)
            self._rebalance([st])
            ctl.basic_publish(CONTROL_EXCHANGE, st.base, b"joined " + self._member)

    def _set_up_one_queue_groups(self, ctl: BlockingChannel, data: BlockingChannel) -> None:
        """``partitions=0``: each topic's group is its shared queue, bound to the topic's
        exchange; every member consumes it. No control signals: there is nothing to share out."""
        args = queue_arguments(self._settings.queue_expires, one_queue=True)
        nowait: pika.channel.Channel = ctl._impl  # type: ignore[attr-defined]
        for st in self._topics:
            nowait.queue_declare(st.shared, durable=True, arguments=args)
            for key, arguments in self._bindings(st.topic):
                nowait.queue_bind(st.shared, st.topic, routing_key=key, arguments=arguments)
            ctl.queue_declare(st.shared, durable=True, arguments=args)  # waits: any refusal
            tag = data.basic_consume(st.shared, self._on_message)
            self._tags[tag] = (st, st.shared, False)

    def _topic_list(self) -> str:
        names = [t.topic for t in self._topics]
        more = f" and {len(names) - 5} more topics" if len(names) > 5 else ""
        return ", ".join(names[:5]) + more

    def _teardown(self) -> None:
        with self._cv:
            self._epoch += 1
            self._buffer.clear()
            self._pending.clear()
            self._draining_queues.clear()
            self._blocked.clear()
            self._uncount.clear()
            self._order.clear()
            self._cmds.clear()
            self._cv.notify_all()
            self._signalled.clear()
            conn = self._conn
            live = self._live
            self._conn = self._live = None
            self._broken = None
            if not self._closed and self._down_since is None:
                self._down_since = time.monotonic()
        if live is not None:  # wait for an application thread polling it to let go
            self._acquire_io(live)
            self._io.release()
        for st in self._topics:
            st.owned.clear()
            st.draining.clear()
        self._tags.clear()
        self._ctl = self._data = self._lockch = None
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                log.debug("closing the consumer connection failed", exc_info=True)

    def _loop(self) -> None:
        """Drive the connection while no application thread does; return when it breaks
        (raising the error) or the consumer is closed."""
        conn = self._conn
        assert conn is not None
        while not self._closed:
            if self._broken is not None:
                raise self._broken
            idle = time.monotonic() - self._last_user
            if self._waiting_users or idle < SLICE:
                # An application thread is driving: stay out of its way until it goes quiet.
                self._kick.wait(max(SLICE - idle, 0.005))
                self._kick.clear()
                continue
            # Never block on the lock: a thread blocked on it would be handed it the moment an
            # application thread lets go, ahead of that thread's next inline ack (ack_nowait).
            if not self._io.acquire(blocking=False):
                self._kick.wait(SLICE)
                self._kick.clear()
                continue
            try:
                if self._broken is not None:
                    raise self._broken
                conn.process_data_events(time_limit=SLICE)  # type: ignore[arg-type]
                self._service()
            finally:
                self._io.release()

    def _service(self) -> None:
        """With ``_io`` held, after polling: write queued commands, rebalance when due, finish
        partition hand-overs."""
        self._run_cmds()
        now = time.monotonic()
        if self._signalled:
            named = [self._by_base[b] for b in self._signalled if b in self._by_base]
            self._signalled.clear()
            self._rebalance(named)
        if now >= self._next_tick:
            count = len(self._topics)
            if count <= CHECKS_PER_TICK:
                self._rebalance(self._topics)
            else:
                start = self._sweep % count
                self._sweep = start + CHECKS_PER_TICK
                self._rebalance([self._topics[(start + i) % count] for i in range(CHECKS_PER_TICK)])
            self._next_tick = now + self._settings.rebalance_interval
        self._finish_drains()

    def _run_cmds(self) -> None:
        """With ``_io`` held: write the queued acks/nacks."""
        with self._cv:
            if not self._cmds:
                return
            cmds, self._cmds = self._cmds, []
        data = self._data
        if data is None:
            return
        # pika's BlockingChannel writes every frame on its own and polls until it is out; its
        # channel object queues frames instead. Corked, they go to the socket in one write;
        # only what the socket did not take needs pika's poll loop (then it is written before
        # this returns, as BlockingChannel would have).
        buffered: pika.channel.Channel = data._impl  # type: ignore[attr-defined]
        conn = buffered.connection
        assert isinstance(conn, CoalescingConnection)
        with conn.corked():
            for op, tag in cmds:
                _settle(buffered, op, tag)
        if conn.output_pending():
            data.connection.process_data_events(0)

    def _on_signal(
        self, _channel: Any, method: pika.spec.Basic.Deliver, _props: Any, body: bytes
    ) -> None:
        kind, _, member = body.partition(b" ")
        if member == self._member:  # this member's own signals change nothing
            return
        base = method.routing_key or ""
        self._seen[(base, member)] = time.monotonic()
        if kind != b"alive":
            self._signalled.add(base)

    def _members(self, st: _Topic, consumers: int) -> int:
        """How many members share ``st``'s partitions: the shared queue's consumers, except
        those not heard from lately. A quorum queue goes on counting the consumer of a node
        that died until the node is back; its member's signals stop at once."""
        now = time.monotonic()
        sweep = self._settings.rebalance_interval * math.ceil(len(self._topics) / CHECKS_PER_TICK)
        timeout = max(MEMBER_TIMEOUT, 3 * max(sweep, HEARTBEAT))
        heard = 0
        for (base, member), when in list(self._seen.items()):
            if now - when > timeout:
                del self._seen[(base, member)]
            elif base == st.base:
                heard += 1
        return max(1, min(consumers, 1 + heard))

    def _on_broker_cancel(self, frame: Any) -> None:
        # The broker cancelled a consumer (its queue was deleted): set everything up again.
        raise pika.exceptions.ConnectionWrongStateError(
            f"RabbitMQ cancelled consumer {frame.method.consumer_tag} (queue deleted?)"
        )

    def _on_message(
        self,
        _channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        tag = method.delivery_tag
        consumer_tag = method.consumer_tag
        if tag is None or consumer_tag is None or consumer_tag not in self._tags:
            return
        st, queue, partition = self._tags[consumer_tag]
        delivery = decode(st.topic, method, props, body)
        message_id = delivery.id
        key = delivery.key
        with self._cv:
            uncounted = self._uncount.pop((queue, message_id), 0)
            if uncounted:
                delivery.attempt = max(1, delivery.attempt - uncounted)
            delivery.handle = _Handle(self._epoch, tag, queue, partition)
            self._pending[queue] += 1
            if partition and key is not None:
                place = self._order.setdefault((queue, message_id), self._arrivals)
                self._arrivals += 1
            if partition and key is not None and (queue, key) in self._blocked:
                spot = (queue, key)
                block = self._blocked[spot]
                if block.expected[message_id] > 0 and any(
                    self._order.get((queue, other), place) < place
                    for other in block.expected
                    if other != message_id
                ):  # returned ahead of an earlier message of its key: once more round
                    self._uncount[(queue, message_id)] += uncounted + 1
                    self._pending[queue] -= 1
                    self._cmds.append(("nack", tag))
                    return
                if block.expected[message_id] > 0:  # a returned message, back in its turn
                    block.expected[message_id] -= 1
                    if block.expected[message_id] <= 0:
                        del block.expected[message_id]
                    if not block.expected and not block.withheld:
                        del self._blocked[spot]
                else:  # a later message of the key: it goes back behind the returned ones
                    self._uncount[(queue, message_id)] += uncounted  # not delivered here
                    block.withheld.append(delivery)
                    self._flush_withheld(spot)
                    return
            self._buffer.append(delivery)
            self._cv.notify_all()

    # -- partitions ------------------------------------------------------------------------------

    def _rebalance(self, topics: list[_Topic]) -> None:
        if not self._partitions:  # an existing queue: nothing to share out
            return
        ctl, data = self._ctl, self._data
        assert ctl is not None and data is not None
        now = time.monotonic()
        for st in topics:
            if now - st.beat >= HEARTBEAT:
                ctl.basic_publish(CONTROL_EXCHANGE, st.base, b"alive " + self._member)
                st.beat = now
            consumers = ctl.queue_declare(st.shared, passive=True).method.consumer_count or 1
            target = math.ceil(self._partitions / self._members(st, consumers))
            held = len(st.owned) + len(st.draining)
            if held > target and st.owned:
                for j in sorted(st.owned, reverse=True)[: held - target]:
                    tag = st.owned.pop(j)
                    data.basic_cancel(tag)
                    self._tags.pop(tag, None)
                    st.draining.add(j)
                    queue = st.partitions[j]
                    with self._cv:
                        self._draining_queues.add(queue)
            elif held < target:
                for step in range(self._partitions):
                    if len(st.owned) + len(st.draining) >= target:
                        break
                    j = (self._offset + step) % self._partitions
                    if j in st.owned or j in st.draining:
                        continue
                    name = st.partitions[j]
                    # The lock alone decides (not the queue's consumer count: a quorum queue
                    # still counts the consumers of a node that died until it is back).
                    if not self._lock(st, j):
                        continue
                    tag = data.basic_consume(name, self._on_message)
                    self._tags[tag] = (st, name, True)
                    st.owned[j] = tag

    def _lock(self, st: _Topic, j: int) -> bool:
        conn, lockch = self._conn, self._lockch
        assert conn is not None and lockch is not None
        try:
            lockch.queue_declare(st.locks[j], exclusive=True, auto_delete=False, durable=False)
            return True
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._lockch = conn.channel()
            if exc.reply_code == 405:  # RESOURCE_LOCKED: another member holds it
                return False
            raise

    def _finish_drains(self) -> None:
        ctl = self._ctl
        assert ctl is not None
        for st in self._topics if self._draining_queues else ():
            for j in sorted(st.draining):
                queue = st.partitions[j]
                with self._cv:
                    if self._pending[queue] > 0 or self._cmds:
                        continue
                    self._draining_queues.discard(queue)
                    self._pending.pop(queue, None)
                    # What is still on its way back goes to the next owner (counted as a
                    # delivery there, see docs/rabbitmq.md).
                    for spot in [b for b in self._blocked if b[0] == queue]:
                        del self._blocked[spot]
                    for item in [u for u in self._uncount if u[0] == queue]:
                        del self._uncount[item]
                    for spot_id in [o for o in self._order if o[0] == queue]:
                        del self._order[spot_id]
                ctl.queue_delete(st.locks[j])
                st.draining.discard(j)
                ctl.basic_publish(CONTROL_EXCHANGE, st.base, b"released " + self._member)


def _settle(channel: pika.channel.Channel, op: str, tag: int) -> None:
    """Write one queued settlement: ``ack``, ``nack`` (requeue) or ``reject`` (no requeue)."""
    if op == "ack":
        channel.basic_ack(tag)
    else:
        channel.basic_nack(tag, requeue=op == "nack")
