"""The consumer: one kafka-python ``KafkaConsumer`` driven by a background poller thread.

Why a thread: a Kafka group member must keep polling to take part in rebalances; if it only
polled inside ``receive()``, a second member joining while the first one's application is busy
would wait for it. The poller keeps the membership alive, fills a bounded buffer (pausing the
partitions when it is full) and applies seeks; ``receive()`` only takes from the buffer, so it
returns promptly after ``close()`` from any thread.

The buffer is not the toolkit's ``ReceiveQueue``: taking a record and marking its offset in
flight must happen under the lock that rebalances and nacks hold while they drop a partition's
buffered records, and the poller waits for the buffer to drain to half. A ``ReceiveQueue``
would put a second lock on every message; the deadline is the toolkit's :class:`Deadline`.

Acks: see :mod:`mqkit_kafka._tracker`. The group commits the first unsettled offset of each
partition; with ``ack_commit=sync`` (default) ``ack()`` returns once that commit is confirmed
(acks from several threads share one commit), so a consumer killed right after an ack never
sees the acked message again. Before partitions are revoked in a rebalance, the rebalance
listener commits what is done.

Nack: Kafka has no per-record nack, so the partition is seeked back to the nacked offset and
the buffered records after it are dropped and fetched again: the nacked record comes back
before anything later on its partition (hence before anything later with its key).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from kafka import (  # type: ignore[import-untyped]
    AsyncConsumerRebalanceListener,
    KafkaConsumer,
    OffsetAndMetadata,
    TopicPartition,
)

from mqkit.adapter import ConsumerBase, Deadline, Delivery
from mqkit.errors import BrokerUnavailable, ConfigError, MqkitError
from mqkit_kafka import wire
from mqkit_kafka._errors import translate
from mqkit_kafka._tracker import PartitionTracker, State
from mqkit_kafka.settings import Settings, honour_auto_create, ms

if TYPE_CHECKING:
    from mqkit_kafka.backend import Backend

log = logging.getLogger("mqkit.kafka.consumer")

Handle = tuple[TopicPartition, int, int]  # (partition, offset, assignment epoch)


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on kafka-python's IO thread during a rebalance."""

    def __init__(self, driver: Consumer) -> None:
        self._driver = driver

    async def on_partitions_revoked(self, revoked: Any) -> None:
        offsets = self._driver._revoke(set(revoked))
        if offsets:
            try:
                await self._driver._consumer.commit_async(offsets)
                self._driver._note_committed(offsets)
            except Exception as exc:
                log.warning(
                    "committing before a rebalance failed (%s); acked messages of %s may be "
                    "delivered again",
                    exc,
                    sorted(f"{tp.topic}[{tp.partition}]" for tp in offsets),
                )

    async def on_partitions_lost(self, lost: Any) -> None:
        self._driver._revoke(set(lost), lost=True)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._driver._assigned(set(assigned))


class Consumer(ConsumerBase):
    """One group member: a poller thread fills a buffer, ``receive`` takes from it."""

    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        topics: tuple[str, ...],
        group: str,
        *,
        created: set[str] | None = None,
    ) -> None:
        super().__init__()
        self._backend = backend
        # What close() deletes for a throw-away group: the topics this consumer created.
        self._created = sorted(created or ())
        self._settings = settings
        self._topics = topics
        self._group = group
        self._where = f"{backend.where} group {group!r}"
        self._hosts = backend.hosts
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # buffer filled / assignment / close
        self._space = threading.Condition(self._lock)  # buffer drained below half
        self._buffer: deque[tuple[TopicPartition, int, Any]] = deque()
        self._parts: dict[TopicPartition, PartitionTracker] = {}
        self._epoch = 0
        self._new_parts: set[TopicPartition] = set()
        self._seeks: dict[TopicPartition, int] = {}
        self._delayed: dict[TopicPartition, float] = {}
        # Revoked partitions whose fetch state kafka-python keeps if they are assigned to this
        # member again: (where to resume, last known commit); see _assigned.
        self._resume: dict[TopicPartition, tuple[int, int | None]] = {}
        self._joined = False
        self._closing = False
        self._stopped = False  # the poller thread has left the group
        self._error: MqkitError | None = None
        # one commit in flight at a time; acks wait for a commit that covers them
        self._commit_cv = threading.Condition()
        self._committing = False
        self._sync_acks = settings.ack_commit == "sync"
        self._half = settings.prefetch // 2
        self._last_commit = 0.0  # monotonic time the poller last started a background commit
        # True while kafka-python may hold a paused flag: a pause of ours, or a rebalance
        # (kafka-python keeps the flag of a partition assigned back); see _apply_seeks_and_pauses
        self._check_pauses = False
        config: dict[str, Any] = dict(backend.client)
        config.update(
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset=settings.offset_reset,
            session_timeout_ms=ms(settings.session_timeout),
            heartbeat_interval_ms=ms(settings.heartbeat),
            max_poll_interval_ms=ms(settings.rebalance_timeout),
            max_poll_records=min(500, settings.prefetch),
            # How long the broker may hold a fetch of partitions without new records. It also
            # bounds one busy partition next to idle ones: kafka-python leaves the busy one out
            # of the fetch in flight while it hands out its records (docs/kafka.md).
            fetch_max_wait_ms=min(500, int(settings.poll_interval * 1000)),
            allow_auto_create_topics=False,
        )
        try:
            self._consumer = KafkaConsumer(**config)
        except Exception as exc:
            raise translate(exc, f"{self._where}: starting a consumer", self._hosts) from None
        honour_auto_create(getattr(self._consumer, "_cluster", None), False)
        try:
            self._consumer.subscribe(list(topics), listener=_Listener(self))
        except Exception as exc:
            self._consumer.close(autocommit=False)
            raise translate(exc, f"{self._where}: subscribing", self._hosts) from None
        self._load_metadata(topics)
        self._thread = threading.Thread(
            target=self._run, name=f"mqkit-kafka-poller-{group}", daemon=True
        )
        self._thread.start()
        self._wait_joined()

    # -- joining ---------------------------------------------------------------------------

    def _load_metadata(self, topics: tuple[str, ...]) -> None:
        """Have the topics' partitions in kafka-python's metadata before the first JoinGroup.

        kafka-python requests that metadata when subscribing but joins without waiting for it.
        As group leader it then assigns only the partitions it knows: with Apache Kafka, which
        completes the first join of a new group at once (``group.initial.rebalance.delay.ms``
        is 0 in CI), that was nothing, and ``consumer()`` returned owning no partition; the
        partitions came with a second rebalance once the metadata arrived. Runs before the
        poller thread starts, so no join is under way yet. A topic created a moment ago may be
        missing from the first metadata answers (more often on a loaded machine): asked again
        for up to 5 s, as a later rebalance would take partitions from a member while its
        messages are in flight, and they would be delivered again.
        """
        deadline = Deadline(min(self._settings.join_timeout, 5.0))
        for topic in topics:
            try:
                while not self._consumer.partitions_for_topic(topic) and not deadline.expired:
                    time.sleep(0.05)
            except Exception as exc:  # the group join reports a broker that is gone
                log.debug("%s: metadata of %r not loaded: %s", self._where, topic, exc)
                return

    def _wait_joined(self) -> None:
        """Return once the group has given this member its partitions (possibly none)."""
        deadline = Deadline(self._settings.join_timeout)
        with self._lock:
            while not self._joined and self._error is None and not deadline.expired:
                self._ready.wait(deadline.remaining())
            joined, error = self._joined, self._error
        if joined:
            return
        self.close()
        if error is not None:
            raise error
        raise BrokerUnavailable(
            f"{self._where}: joining the consumer group did not complete within "
            f"join_timeout={self._settings.join_timeout:g} s"
        )

    # -- rebalance callbacks (IO thread) -----------------------------------------------------

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        with self._lock:
            for tp in assigned:
                if tp in self._parts:
                    continue
                self._epoch += 1
                resume = self._resume.get(tp)
                if resume is None:
                    # Fresh to kafka-python too: it starts at the group's commit (or resets).
                    self._parts[tp] = PartitionTracker(self._epoch, None)
                    self._new_parts.add(tp)
                    continue
                # Revoked just before and assigned back: kafka-python keeps the partition's
                # fetch position (and paused flag) across an eager rebalance, but the records
                # between the commit point and that position were dropped from the buffer on
                # revocation. Go back to the first record not settled, as a new owner would.
                point, committed = resume
                part = PartitionTracker(self._epoch, point)
                part.committed = committed
                self._parts[tp] = part
                self._seeks[tp] = point
            self._resume.clear()
            self._check_pauses = True
            if not self._new_parts:
                self._joined = True  # no partitions to position: ready already
                self._ready.notify_all()

    def _revoke(
        self, revoked: set[TopicPartition], *, lost: bool = False
    ) -> dict[TopicPartition, Any]:
        """Forget revoked partitions; returns the offsets to commit for them.

        Unless the partitions are ``lost`` (kafka-python then drops their state), remember
        where each one resumes in case the rebalance gives it back to this member.
        """
        offsets: dict[TopicPartition, Any] = {}
        with self._lock:
            self._resume.clear()
            for tp in revoked:
                part = self._parts.pop(tp, None)
                self._new_parts.discard(tp)
                self._seeks.pop(tp, None)
                self._delayed.pop(tp, None)
                if part is None:
                    continue
                point = part.commit_point()
                if point is None:
                    continue  # nothing fetched yet: kafka-python's position is still right
                if not lost:
                    self._resume[tp] = (point, part.committed)
                if part.committed is None or point > part.committed:
                    offsets[tp] = OffsetAndMetadata(point, "", -1)
            if revoked:
                self._buffer = deque(item for item in self._buffer if item[0] not in revoked)
        return offsets

    def _note_committed(self, offsets: dict[TopicPartition, Any]) -> None:
        with self._lock:
            for tp, meta in offsets.items():
                part = self._parts.get(tp)
                if part is not None and (part.committed is None or meta.offset > part.committed):
                    part.committed = meta.offset
                resume = self._resume.get(tp)
                if resume is not None and (resume[1] is None or meta.offset > resume[1]):
                    self._resume[tp] = (resume[0], meta.offset)

    # -- the poller thread ---------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        interval = int(self._settings.poll_interval * 1000)
        # Short polls during the first half second of the join: the poll that completes it
        # would otherwise wait for records (up to poll_interval) before consumer() returns.
        # Not for longer: a join held by the broker (its initial delay, a member that does not
        # rejoin) would have the thread spin (a third of a core for a 6 s wait).
        quick_join, quick_until = min(interval, 10), time.monotonic() + 0.5
        prefetch = self._settings.prefetch
        most = min(500, prefetch)  # kafka-python's max_poll_records
        failures = 0
        while not self._closing:
            try:
                # A full buffer: wait (up to poll_interval) for the application to take half of
                # it. Only if it does not (it is busy) are all partitions paused, so that
                # poll(0) does just the group's work (rebalances) without fetching more.
                # (Pausing at every fill made kafka-python park and restore its fetched records
                # each time: about one pause/resume per 400 records at full speed.)
                stalled = len(self._buffer) >= prefetch and not self._wait_for_space()
                self._apply_seeks_and_pauses(stalled)
                self._finish_pending_join()
                space = prefetch - len(self._buffer)
                if stalled:
                    timeout = 0
                elif self._joined or time.monotonic() > quick_until:
                    timeout = interval
                else:
                    timeout = quick_join
                records = consumer.poll(
                    timeout_ms=timeout,
                    max_records=min(most, space) if space > 0 else most,
                )
                self._position_new_partitions(records)
                self._take(records)
                if not self._sync_acks:
                    now = time.monotonic()
                    if now - self._last_commit >= self._settings.poll_interval:
                        self._last_commit = now
                        self._commit(wait=False)
                failures = 0
            except Exception as exc:
                failures += 1
                if self._stopping():
                    break
                error = translate(exc, f"{self._where}: polling", self._hosts)
                log.warning("%s (attempt %d; retrying)", error, failures)
                if not self._joined and (failures >= 3 or isinstance(error, ConfigError)):
                    with self._lock:
                        self._error = error
                        self._ready.notify_all()
                    break
                time.sleep(min(2.0, 0.1 * failures))
        self._shutdown()

    def _finish_pending_join(self) -> None:
        """Make the next poll complete a join that kafka-python 3.0.12 would leave unfinished.

        A poll whose timeout expires during a rebalance leaves the JoinGroup/SyncGroup task in
        flight, and the next poll awaits it only if the coordinator still wants to rejoin. When
        the rebalance was started by a metadata change (a subscribed topic appearing, partitions
        added), that wish is derived from the metadata snapshot, which the group leader updates
        while assigning: once the poll gave up after the assignment, no later poll awaits the
        task, the assignment is never applied and the member owns nothing while the group
        believes it owns everything (seen on Apache Kafka when a consumer joined before the
        broker's metadata showed a just-created topic). Asking for a rejoin while such a task
        is pending makes the next poll finish the rebalance (with one more JoinGroup round if
        the task had already completed). Runs on the poller thread between polls, when no poll
        is touching the task.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None or getattr(coordinator, "_join_task", None) is None:
            return
        if not coordinator.rejoin_needed:
            log.debug("%s: a rebalance is pending; making the next poll finish it", self._where)
            coordinator.request_rejoin()

    def _stopping(self) -> bool:
        return self._closing

    def _wait_for_space(self) -> bool:
        """Wait up to poll_interval until the buffer is at most half full; False if it is not."""
        half = self._half
        with self._lock:
            return self._space.wait_for(
                lambda: self._closing or len(self._buffer) <= half, self._settings.poll_interval
            )

    def _apply_seeks_and_pauses(self, stalled: bool) -> None:
        """Seek nacked partitions back; pause delayed partitions, or all of them if stalled."""
        consumer = self._consumer
        now = time.monotonic()
        with self._lock:
            seeks, self._seeks = self._seeks, {}
            for tp, until in list(self._delayed.items()):
                if until <= now:
                    del self._delayed[tp]
            want = set(self._parts) if stalled else set(self._delayed)
            if not (seeks or want or self._check_pauses):
                return  # nothing to seek, nothing paused nor to pause: the usual case
            self._check_pauses = bool(want)
        for tp, offset in seeks.items():
            # ValueError: revoked meanwhile; the new owner starts from the commit
            with contextlib.suppress(ValueError):
                consumer.seek(tp, offset)
        # Compare with kafka-python's own paused flags, not with what was asked before: a
        # partition assigned back in a rebalance keeps its flag there.
        paused = set(consumer.paused())
        for tp in want - paused:
            with contextlib.suppress(KeyError):  # revoked meanwhile
                consumer.pause(tp)
        for tp in paused - want:
            with contextlib.suppress(KeyError):
                consumer.resume(tp)

    def _position_new_partitions(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Note where newly assigned partitions start (records of this poll count as unread)."""
        if not self._new_parts:  # only the IO thread adds to it, in a rebalance: seen next time
            return
        with self._lock:
            new = set(self._new_parts)
        if not new:
            return
        positions = {}
        for tp in new:
            if records.get(tp):
                positions[tp] = records[tp][0].offset
                continue
            try:
                positions[tp] = self._consumer.position(
                    tp, timeout_ms=int(self._settings.commit_timeout * 1000)
                )
            except Exception as exc:  # revoked meanwhile, or a reset that failed: retry later
                log.debug("position of %s not known yet: %s", tp, exc)
        with self._lock:
            for tp, position in positions.items():
                part = self._parts.get(tp)
                if part is not None and tp in self._new_parts and position is not None:
                    if part.next_offset is None:
                        part.next_offset = position
                    part.committed = position if part.committed is None else part.committed
                    self._new_parts.discard(tp)
            if not self._new_parts and not self._joined:
                self._joined = True
                self._ready.notify_all()

    def _take(self, records: dict[TopicPartition, list[Any]]) -> None:
        if not records:
            return
        with self._lock:
            added = False
            append = self._buffer.append
            for tp, batch in records.items():
                part = self._parts.get(tp)
                if part is None or tp in self._seeks:
                    continue  # revoked, or a nack asked for a seek: these come again
                fetched, epoch = part.fetched, part.epoch
                for record in batch:
                    if fetched(record.offset):
                        append((tp, epoch, record))
                        added = True
            if added:
                self._ready.notify_all()

    def _shutdown(self) -> None:
        """Commit what is done, leave the group (unacked messages go to other members)."""
        try:
            self._commit(wait=True)
        except Exception as exc:
            log.warning("%s: final commit failed: %s", self._where, exc)
        try:
            self._consumer.close(
                autocommit=False, timeout_ms=int(self._settings.commit_timeout * 1000)
            )
        except Exception as exc:
            log.debug("%s: closing the Kafka consumer failed: %s", self._where, exc)
        with self._lock:
            self._stopped = True
            self._ready.notify_all()

    # -- commits -------------------------------------------------------------------------

    def _pending_commits(self) -> dict[TopicPartition, Any]:
        with self._lock:
            offsets = {}
            for tp, part in self._parts.items():
                point = part.needs_commit()
                if point is not None:
                    offsets[tp] = OffsetAndMetadata(point, "", -1)
            return offsets

    def _commit(self, *, wait: bool) -> None:
        """Commit every partition's commit point; with ``wait``, until confirmed.

        Only one commit is in flight at a time, so commits reach the broker in order; a caller
        that finds one in flight waits for it and then commits whatever is still pending.
        """
        deadline = time.monotonic() + self._settings.commit_timeout
        while True:
            with self._commit_cv:
                while self._committing:
                    if not wait:
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BrokerUnavailable(
                            f"{self._where}: offset commit not confirmed within "
                            f"commit_timeout={self._settings.commit_timeout:g} s"
                        )
                    self._commit_cv.wait(remaining)
                offsets = self._pending_commits()
                if not offsets:
                    return
                self._committing = True
            done = threading.Event()
            outcome: list[Any] = []

            def finished(
                result: Any, offsets: Any = offsets, outcome: Any = outcome, done: Any = done
            ) -> None:
                self._commit_finished(offsets, result)
                outcome.append(result)
                done.set()

            try:
                future = self._consumer.commit_async(offsets)
            except Exception as exc:
                self._commit_finished(offsets, exc)
                raise
            future.add_both(finished)
            if not wait:
                return
            if not done.wait(max(0.0, deadline - time.monotonic())):
                raise BrokerUnavailable(
                    f"{self._where}: offset commit not confirmed within "
                    f"commit_timeout={self._settings.commit_timeout:g} s"
                )
            if isinstance(outcome[0], BaseException):
                raise outcome[0]
            return

    def _commit_finished(self, offsets: dict[TopicPartition, Any], result: Any) -> None:
        if not isinstance(result, BaseException):
            self._note_committed(offsets)
        with self._commit_cv:
            self._committing = False
            self._commit_cv.notify_all()

    # -- the driver API ------------------------------------------------------------------

    def receive(self, timeout: float | None) -> Delivery | None:
        deadline = None  # made only when the buffer is empty: the usual case has no wait
        parts = self._parts
        with self._lock:
            while True:
                if self._closing or self._stopped:
                    return None
                if self._error is not None:
                    raise self._error
                buffer = self._buffer  # a nack or a revocation may have replaced it
                while buffer:
                    tp, epoch, record = buffer.popleft()
                    if len(buffer) == self._half:
                        self._space.notify()
                    part = parts.get(tp)
                    if part is None or part.epoch != epoch:
                        continue
                    attempt = part.deliver(record.offset)
                    if attempt is not None:
                        break
                else:
                    if deadline is None:
                        deadline = Deadline(timeout)
                    if deadline.expired:
                        return None
                    self._ready.wait(deadline.remaining(1.0))
                    continue
                break
        # built outside the lock: the record is ours now (in flight), the poller need not wait
        return wire.decode(tp.topic, tp.partition, record, attempt, (tp, record.offset, epoch))

    def _settle(self, delivery: Delivery) -> PartitionTracker | None:
        tp, offset, epoch = delivery.handle
        part = self._parts.get(tp)
        if part is None or part.epoch != epoch or part.state(offset) is not State.INFLIGHT:
            self._stale(delivery)
            return None
        return part

    @staticmethod
    def _stale(delivery: Delivery) -> None:
        tp = delivery.handle[0]
        log.info(
            "message %s on %s[%d] was settled after its partition moved to another member; "
            "it will be delivered again there",
            delivery.id,
            tp.topic,
            tp.partition,
        )

    def ack(self, delivery: Delivery) -> None:
        tp, offset, epoch = delivery.handle
        with self._lock:
            part = self._parts.get(tp)
            if part is None or part.epoch != epoch or not part.done(offset):
                part = None
            elif not self._sync_acks:
                return  # the poller commits in the background
            else:
                advances = part.needs_commit() is not None
        if part is None:
            self._stale(delivery)
        elif advances:
            self._commit_for_ack(delivery)

    def _commit_for_ack(self, delivery: Delivery) -> None:
        try:
            self._commit(wait=True)
        except Exception as exc:
            log.warning(
                "%s: ack of message %s could not be committed yet (%s); it is committed with a "
                "later ack, or delivered again if this consumer stops first",
                self._where,
                delivery.id,
                exc,
            )

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None:
        if not requeue:
            self.ack(delivery)
            return
        tp, offset, _ = delivery.handle
        with self._lock:
            part = self._settle(delivery)
            if part is None:
                return
            dropped = set(part.rewind(offset))
            if dropped:
                self._buffer = deque(
                    item
                    for item in self._buffer
                    if not (item[0] == tp and item[2].offset in dropped)
                )
            # Seek to the first offset that must be fetched again, not to this one: after
            # an earlier nack on the partition, the records from its offset on may not have
            # come back yet, and a later nack's seek must not skip them.
            self._seeks[tp] = part.next_offset if part.next_offset is not None else offset
            if delay > 0:
                self._delayed[tp] = max(self._delayed.get(tp, 0.0), time.monotonic() + delay)

    def _close(self) -> None:
        """Stop the poller: it commits what is done and leaves the group (unacked messages go
        to the other members)."""
        with self._lock:
            self._closing = True
            self._ready.notify_all()
            self._space.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(self._settings.commit_timeout + self._settings.poll_interval + 5)
        if self._settings.throwaway:
            self._backend.discard(self._group, self._created)

    # -- introspection (tests) -----------------------------------------------------------

    @property
    def kafka_consumer(self) -> Any:
        """The kafka-python consumer; only the poller thread may call it."""
        return self._consumer
