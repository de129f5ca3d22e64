"""One consumer group member, whichever Kafka client drives it: a poller thread fills a buffer,
``receive()`` takes from it, acks commit, nacks seek back.

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
listener hands out nothing more from them, waits up to ``revoke_grace`` for the messages in
flight on them to be settled, and commits what is done: a handler that acks a moment after the
rebalance began does not have its message delivered again to the new owner.

Nack: Kafka has no per-record nack, so the partition is seeked back to the nacked offset and
the buffered records after it are dropped and fetched again: the nacked record comes back
before anything later on its partition (hence before anything later with its key).

Everything here is the same for every client; a subclass (:mod:`mqkit_kafka.consumer` on
kafka-python, :mod:`mqkit_kafka.confluent` on confluent-kafka) opens the client in ``_open``
and supplies the ``_client_*`` primitives and rebalance callbacks that call
:meth:`~GroupMember._assigned` and :meth:`~GroupMember._revoke`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kafka import TopicPartition  # type: ignore[import-untyped]

from mqkit.adapter import ConsumerBase, Deadline, Delivery
from mqkit.errors import BrokerUnavailable, ConfigError, MqkitError
from mqkit_kafka._tracker import PartitionTracker, State
from mqkit_kafka.settings import Settings

if TYPE_CHECKING:
    from mqkit_kafka.backend import Backend

log = logging.getLogger("mqkit.kafka.consumer")

Handle = tuple[TopicPartition, int, int]  # (partition, offset, assignment epoch)
#: What a poll returned: the records of each partition, in offset order.
Records = Mapping[TopicPartition, Sequence[Any]]


class GroupMember(ConsumerBase):
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
        self._settled = threading.Condition(self._lock)  # an ack/nack while _draining
        # Partitions a rebalance is about to revoke: nothing more is handed out from them.
        self._draining: frozenset[TopicPartition] = frozenset()
        # (partition, assignment epoch, offset, record)
        self._buffer: deque[tuple[TopicPartition, int, int, Any]] = deque()
        self._parts: dict[TopicPartition, PartitionTracker] = {}
        self._epoch = 0
        self._new_parts: set[TopicPartition] = set()
        self._seeks: dict[TopicPartition, int] = {}
        self._delayed: dict[TopicPartition, float] = {}
        # Revoked partitions whose fetch state the client may keep if they are assigned to this
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
        # True while the client may hold a paused flag: a pause of ours, or a rebalance (a
        # client may keep the flag of a partition assigned back); see _apply_seeks_and_pauses
        self._check_pauses = False
        self._thread: threading.Thread | None = None
        self._open()
        self._start()

    # -- what a client supplies --------------------------------------------------------------

    #: The offset of a record the client returned.
    _offset_of: Callable[[Any], int]

    def _open(self) -> None:
        """Open the client and subscribe it to the topics (the poller joins the group)."""
        raise NotImplementedError

    def _client_poll(self, timeout: float, max_records: int) -> Records:
        """Records fetched within ``timeout`` seconds; rebalance callbacks run in here."""
        raise NotImplementedError

    def _client_seek(self, tp: TopicPartition, offset: int) -> bool:
        """Fetch ``tp`` from ``offset`` next; False to try again after the next poll."""
        raise NotImplementedError

    def _client_paused(self) -> set[TopicPartition]:
        raise NotImplementedError

    def _client_pause(self, tp: TopicPartition) -> None:
        raise NotImplementedError

    def _client_resume(self, tp: TopicPartition) -> None:
        raise NotImplementedError

    def _client_position(self, tp: TopicPartition) -> int | None:
        """Where a newly assigned partition starts (its commit, or the reset); None: not yet."""
        raise NotImplementedError

    def _client_commit(
        self, offsets: dict[TopicPartition, int], finished: Callable[[object], None]
    ) -> None:
        """Start committing ``offsets``; ``finished(None or the error)`` once it is done."""
        raise NotImplementedError

    def _client_close(self) -> None:
        """Leave the group without committing (the final commit is done)."""
        raise NotImplementedError

    def _translate(self, exc: BaseException, where: str) -> MqkitError:
        raise NotImplementedError

    def _decode(self, tp: TopicPartition, record: Any, attempt: int, handle: Handle) -> Delivery:
        raise NotImplementedError

    def _before_poll(self) -> None:
        """Client housekeeping between polls, on the poller thread."""

    # -- joining ---------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the poller and return once the group has given this member its partitions."""
        self._thread = threading.Thread(
            target=self._run, name=f"mqkit-kafka-poller-{self._group}", daemon=True
        )
        self._thread.start()
        self._wait_joined()

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

    # -- rebalance callbacks (the client's thread) -------------------------------------------

    def _assigned(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Track newly assigned partitions; returns where revoked-and-returned ones resume."""
        resumes: dict[TopicPartition, int] = {}
        with self._lock:
            for tp in assigned:
                if tp in self._parts:
                    continue
                self._epoch += 1
                resume = self._resume.get(tp)
                if resume is None:
                    # Fresh to the client too: it starts at the group's commit (or resets).
                    self._parts[tp] = PartitionTracker(self._epoch, None)
                    self._new_parts.add(tp)
                    continue
                # Revoked just before and assigned back: the records between the commit point
                # and the fetch position were dropped from the buffer on revocation (and
                # kafka-python keeps that position across an eager rebalance). Go back to the
                # first record not settled, as a new owner would.
                point, committed = resume
                part = PartitionTracker(self._epoch, point)
                part.committed = committed
                self._parts[tp] = part
                self._seeks[tp] = resumes[tp] = point
            self._resume.clear()
            self._check_pauses = True
            if not self._new_parts:
                self._joined = True  # no partitions to position: ready already
                self._ready.notify_all()
        return resumes

    def _start_draining(self, revoked: set[TopicPartition]) -> Deadline:
        """Hand out nothing more from partitions about to be revoked; returns the grace's end."""
        with self._lock:
            self._draining = frozenset(revoked)
            self._buffer = deque(item for item in self._buffer if item[0] not in revoked)
        return Deadline(self._settings.revoke_grace)

    def _in_flight(self, revoked: set[TopicPartition]) -> bool:
        """Whether messages handed out from ``revoked`` are still unsettled (and worth waiting
        for: not when this consumer is closing)."""
        with self._lock:
            return not self._closing and self._unsettled(revoked)

    def _unsettled(self, revoked: set[TopicPartition]) -> bool:
        parts = self._parts
        return any(tp in parts and parts[tp].in_flight() for tp in revoked)

    def _drain(self, revoked: set[TopicPartition]) -> None:
        """Wait (up to ``revoke_grace``) for the messages in flight on ``revoked`` to be
        settled; for clients whose rebalance callback may block its thread."""
        deadline = self._start_draining(revoked)
        with self._lock:
            while not self._closing and self._unsettled(revoked) and not deadline.expired:
                self._settled.wait(deadline.remaining())

    def _revoke(
        self, revoked: set[TopicPartition], *, lost: bool = False
    ) -> dict[TopicPartition, int]:
        """Forget revoked partitions; returns the offsets to commit for them.

        Unless the partitions are ``lost`` (the client then drops their state), remember
        where each one resumes in case the rebalance gives it back to this member.
        """
        offsets: dict[TopicPartition, int] = {}
        with self._lock:
            self._draining = frozenset()
            self._resume.clear()
            for tp in revoked:
                part = self._parts.pop(tp, None)
                self._new_parts.discard(tp)
                self._seeks.pop(tp, None)
                self._delayed.pop(tp, None)
                if part is None:
                    continue
                if not lost and part.in_flight():
                    log.info(
                        "%s: messages in flight on %s[%d] were not settled within "
                        "revoke_grace=%g s; the partition's new owner gets them again",
                        self._where,
                        tp.topic,
                        tp.partition,
                        self._settings.revoke_grace,
                    )
                point = part.commit_point()
                if point is None:
                    continue  # nothing fetched yet: the client's position is still right
                if not lost:
                    self._resume[tp] = (point, part.committed)
                if part.committed is None or point > part.committed:
                    offsets[tp] = point
            if revoked:
                self._buffer = deque(item for item in self._buffer if item[0] not in revoked)
        return offsets

    def _revoke_commit_failed(self, offsets: dict[TopicPartition, int], exc: Exception) -> None:
        log.warning(
            "%s: committing before a rebalance failed (%s); acked messages of %s may be "
            "delivered again",
            self._where,
            exc,
            sorted(f"{tp.topic}[{tp.partition}]" for tp in offsets),
        )

    def _note_committed(self, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                part = self._parts.get(tp)
                if part is not None and (part.committed is None or offset > part.committed):
                    part.committed = offset
                resume = self._resume.get(tp)
                if resume is not None and (resume[1] is None or offset > resume[1]):
                    self._resume[tp] = (resume[0], offset)

    # -- the poller thread ---------------------------------------------------------------

    def _run(self) -> None:
        interval = self._settings.poll_interval
        # Short polls during the first half second of the join: the poll that completes it
        # would otherwise wait for records (up to poll_interval) before consumer() returns.
        # Not for longer: a join held by the broker (its initial delay, a member that does not
        # rejoin) would have the thread spin (a third of a core for a 6 s wait).
        quick_join, quick_until = min(interval, 0.01), time.monotonic() + 0.5
        prefetch = self._settings.prefetch
        most = min(500, prefetch)  # records per poll
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
                self._before_poll()
                space = prefetch - len(self._buffer)
                if stalled:
                    timeout = 0.0
                elif self._joined or time.monotonic() > quick_until:
                    timeout = interval
                else:
                    timeout = quick_join
                records = self._client_poll(timeout, min(most, space) if space > 0 else most)
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
                error = self._translate(exc, f"{self._where}: polling")
                log.warning("%s (attempt %d; retrying)", error, failures)
                if not self._joined and (failures >= 3 or isinstance(error, ConfigError)):
                    self._fail(error)
                    break
                time.sleep(min(2.0, 0.1 * failures))
        self._shutdown()

    def _stopping(self) -> bool:
        return self._closing  # a call: the loop's condition does not narrow it for mypy

    def _fail(self, error: MqkitError) -> None:
        """Report ``error`` to the caller waiting for the join, and to every receive."""
        with self._lock:
            self._error = error
            self._ready.notify_all()

    def _wait_for_space(self) -> bool:
        """Wait up to poll_interval until the buffer is at most half full; False if it is not."""
        half = self._half
        with self._lock:
            return self._space.wait_for(
                lambda: self._closing or len(self._buffer) <= half, self._settings.poll_interval
            )

    def _apply_seeks_and_pauses(self, stalled: bool) -> None:
        """Seek nacked partitions back; pause delayed partitions, or all of them if stalled."""
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
        retry = {tp: offset for tp, offset in seeks.items() if not self._client_seek(tp, offset)}
        if retry:
            with self._lock:
                for tp, offset in retry.items():
                    if tp in self._parts:  # not revoked meanwhile
                        self._seeks.setdefault(tp, offset)
        # Compare with the client's own paused flags, not with what was asked before: a
        # partition assigned back in a rebalance may keep its flag there.
        paused = self._client_paused()
        for tp in want - paused:
            self._client_pause(tp)
        for tp in paused - want:
            self._client_resume(tp)

    def _position_new_partitions(self, records: Records) -> None:
        """Note where newly assigned partitions start (records of this poll count as unread)."""
        if not self._new_parts:  # only rebalance callbacks add to it: seen next time
            return
        with self._lock:
            new = set(self._new_parts)
        if not new:
            return
        positions: dict[TopicPartition, int | None] = {}
        for tp in new:
            batch = records.get(tp)
            if batch:
                positions[tp] = self._offset_of(batch[0])
                continue
            try:
                positions[tp] = self._client_position(tp)
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

    def _take(self, records: Records) -> None:
        if not records:
            return
        offset_of = self._offset_of
        with self._lock:
            added = False
            append = self._buffer.append
            for tp, batch in records.items():
                part = self._parts.get(tp)
                if part is None or tp in self._seeks or tp in self._draining:
                    continue  # revoked, being revoked, or a nack asked for a seek
                fetched, epoch = part.fetched, part.epoch
                for record in batch:
                    offset = offset_of(record)
                    if fetched(offset):
                        append((tp, epoch, offset, record))
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
            self._client_close()
        except Exception as exc:
            log.debug("%s: closing the Kafka consumer failed: %s", self._where, exc)
        with self._lock:
            self._stopped = True
            self._ready.notify_all()

    # -- commits -------------------------------------------------------------------------

    def _pending_commits(self) -> dict[TopicPartition, int]:
        with self._lock:
            offsets = {}
            for tp, part in self._parts.items():
                point = part.needs_commit()
                if point is not None:
                    offsets[tp] = point
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
                        raise self._commit_timed_out()
                    self._commit_cv.wait(remaining)
                offsets = self._pending_commits()
                if not offsets:
                    return
                self._committing = True
            done = threading.Event()
            outcome: list[object] = []

            def finished(
                result: object, offsets: Any = offsets, outcome: Any = outcome, done: Any = done
            ) -> None:
                self._commit_finished(offsets, result)
                outcome.append(result)
                done.set()

            try:
                self._client_commit(offsets, finished)
            except Exception as exc:
                self._commit_finished(offsets, exc)
                raise
            if not wait:
                return
            if not done.wait(max(0.0, deadline - time.monotonic())):
                raise self._commit_timed_out()
            if isinstance(outcome[0], BaseException):
                raise outcome[0]
            return

    def _commit_timed_out(self) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"{self._where}: offset commit not confirmed within "
            f"commit_timeout={self._settings.commit_timeout:g} s"
        )

    def _commit_finished(self, offsets: dict[TopicPartition, int], result: object) -> None:
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
                    tp, epoch, offset, record = buffer.popleft()
                    if len(buffer) == self._half:
                        self._space.notify()
                    part = parts.get(tp)
                    if part is None or part.epoch != epoch:
                        continue
                    attempt = part.deliver(offset)
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
        return self._decode(tp, record, attempt, (tp, offset, epoch))

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
        advances = False  # without sync acks, the poller commits in the background
        with self._lock:
            part = self._parts.get(tp)
            if part is None or part.epoch != epoch or not part.done(offset):
                part = None
            else:
                if self._draining:
                    self._settled.notify_all()
                advances = self._sync_acks and part.needs_commit() is not None
        if part is None:
            self._stale(delivery)
        elif advances:
            self._commit_for_ack(delivery)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Every ``ack`` of ``deliveries``, with at most one commit for all of them."""
        advances = False
        stale: list[Delivery] = []
        with self._lock:
            for delivery in deliveries:
                tp, offset, epoch = delivery.handle
                part = self._parts.get(tp)
                if part is None or part.epoch != epoch or not part.done(offset):
                    stale.append(delivery)
                elif self._sync_acks and not advances:
                    advances = part.needs_commit() is not None
            if self._draining:
                self._settled.notify_all()
        for delivery in stale:
            self._stale(delivery)
        if advances:
            self._commit_for_ack(deliveries[-1])

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
                    item for item in self._buffer if not (item[0] == tp and item[2] in dropped)
                )
            # Seek to the first offset that must be fetched again, not to this one: after
            # an earlier nack on the partition, the records from its offset on may not have
            # come back yet, and a later nack's seek must not skip them.
            self._seeks[tp] = part.next_offset if part.next_offset is not None else offset
            if delay > 0:
                self._delayed[tp] = max(self._delayed.get(tp, 0.0), time.monotonic() + delay)
            if self._draining:
                self._settled.notify_all()

    def _close(self) -> None:
        """Stop the poller: it commits what is done and leaves the group (unacked messages go
        to the other members)."""
        with self._lock:
            self._closing = True
            self._ready.notify_all()
            self._space.notify_all()
            self._settled.notify_all()
        thread = self._thread
        if thread is not None and threading.current_thread() is not thread:
            thread.join(self._settings.commit_timeout + self._settings.poll_interval + 5)
        if self._settings.throwaway:
            self._backend.discard(self._group, self._created)
