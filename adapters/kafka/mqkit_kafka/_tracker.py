"""Per-partition bookkeeping: which offsets are buffered, in flight or acked, and how far the
group may commit.

Kafka stores one number per (group, partition): the next offset to read. Acks arrive in any
order, so the committable offset is the first offset this consumer fetched that is not yet
settled; an ack beyond a gap is remembered but never committed past the gap.
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class State(Enum):
    BUFFERED = 1  # fetched, waiting in the consumer's buffer
    INFLIGHT = 2  # handed to the application, not settled yet
    DONE = 3  # acked, or nacked without requeue


class PartitionTracker:
    """Offsets of one assigned partition, from its last commit point onwards.

    ``epoch`` changes every time the partition is (re)assigned, so settlements of messages
    delivered under an older assignment are recognised and ignored.
    """

    __slots__ = ("_order", "_state", "attempts", "committed", "epoch", "next_offset")

    def __init__(self, epoch: int, position: int | None) -> None:
        self.epoch = epoch
        #: The offset after the last one fetched: what to commit once everything fetched is done.
        self.next_offset = position
        #: The last offset this consumer committed (or found committed) for the partition.
        self.committed = position
        self._order: deque[int] = deque()  # tracked offsets, ascending
        self._state: dict[int, State] = {}
        #: Deliveries so far per offset, while this consumer owns the partition.
        self.attempts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._state)

    def state(self, offset: int) -> State | None:
        return self._state.get(offset)

    def fetched(self, offset: int) -> bool:
        """Record a fetched offset; False if it is already tracked (a re-fetch after a seek)."""
        if offset in self._state:
            self._advance(offset + 1)
            return False
        if self.committed is not None and offset < self.committed:
            return False
        if self._order and offset < self._order[-1]:
            self._insert_sorted(offset)
        else:
            self._order.append(offset)
        self._state[offset] = State.BUFFERED
        self._advance(offset + 1)
        return True

    def _advance(self, after: int) -> None:
        if self.next_offset is None or after > self.next_offset:
            self.next_offset = after

    def _insert_sorted(self, offset: int) -> None:
        items = sorted([*self._order, offset])
        self._order = deque(items)

    def deliver(self, offset: int) -> int | None:
        """Mark a buffered offset as handed out; returns its attempt number, or None if stale."""
        if self._state.get(offset) is not State.BUFFERED:
            return None
        self._state[offset] = State.INFLIGHT
        attempt = self.attempts.get(offset, 0) + 1
        self.attempts[offset] = attempt
        return attempt

    def done(self, offset: int) -> bool:
        """Settle an in-flight offset for good (ack or drop); False if it was not in flight."""
        if self._state.get(offset) is not State.INFLIGHT:
            return False
        self._state[offset] = State.DONE
        return True

    def rewind(self, offset: int) -> list[int]:
        """Forget ``offset`` and every buffered offset after it, so all of them are fetched again.

        Returns the buffered offsets that were dropped. In-flight and done offsets after
        ``offset`` stay tracked, so the re-fetch skips them instead of delivering them twice.
        """
        dropped = [o for o in self._order if o > offset and self._state[o] is State.BUFFERED]
        forget = {offset, *dropped}
        self._order = deque(o for o in self._order if o not in forget)
        for o in forget:
            self._state.pop(o, None)
        if self.next_offset is None or offset < self.next_offset:
            self.next_offset = offset
        return dropped

    def commit_point(self) -> int | None:
        """The offset the group may commit: the first offset not done yet.

        That is the first tracked offset that is not done, or the fetch position if it is lower
        (after a rewind, offsets from the position on will be fetched again). Done offsets
        below the commit point are forgotten; those above it stay, so a re-fetch skips them.
        """
        frontier = self.next_offset
        while self._order and self._state[self._order[0]] is State.DONE:
            if frontier is not None and self._order[0] >= frontier:
                break
            offset = self._order.popleft()
            del self._state[offset]
            self.attempts.pop(offset, None)
        first = next((o for o in self._order if self._state[o] is not State.DONE), None)
        if first is None:
            return frontier
        return first if frontier is None else min(first, frontier)

    def needs_commit(self) -> int | None:
        """The commit point if it is past what was committed, else None."""
        point = self.commit_point()
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point
