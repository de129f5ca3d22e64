"""Per-partition bookkeeping: which offsets are buffered, in flight or acked, and how far the
group may commit.

Kafka stores one number per (group, partition): the next offset to read. Acks arrive in any
order, so the committable offset is the first offset this consumer fetched that is not yet
settled; an ack beyond a gap is remembered but never committed past the gap.

Every message passes through ``fetched``, ``deliver`` and ``done`` once, so these are kept to a
dictionary look-up and store each: an offset's state is a small int in one dict, and the
attempt counter is only kept for offsets delivered more than once (after a rewind).
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class State(Enum):
    BUFFERED = 1  # fetched, waiting in the consumer's buffer
    INFLIGHT = 2  # handed to the application, not settled yet
    DONE = 3  # acked, or nacked without requeue


# The hot paths compare plain ints; State is what ``state()`` reports.
_BUFFERED, _INFLIGHT, _DONE = 1, 2, 3
_STATES = {1: State.BUFFERED, 2: State.INFLIGHT, 3: State.DONE}


class PartitionTracker:
    """Offsets of one assigned partition, from its last commit point onwards.

    ``epoch`` changes every time the partition is (re)assigned, so settlements of messages
    delivered under an older assignment are recognised and ignored.
    """

    __slots__ = ("_order", "_state", "_tries", "attempts", "committed", "epoch", "next_offset")

    def __init__(self, epoch: int, position: int | None) -> None:
        self.epoch = epoch
        #: The offset after the last one fetched: what to commit once everything fetched is done.
        self.next_offset = position
        #: The last offset this consumer committed (or found committed) for the partition.
        self.committed = position
        self._order: deque[int] = deque()  # tracked offsets, ascending
        self._state: dict[int, int] = {}
        #: Deliveries so far of offsets delivered more than once or rewound, while this
        #: consumer owns the partition (an offset missing here was delivered at most once).
        self.attempts: dict[int, int] = {}
        self._tries: dict[int, int] = {}  # attempts of rewound offsets until fetched again

    def __len__(self) -> int:
        return len(self._state)

    def state(self, offset: int) -> State | None:
        value = self._state.get(offset)
        return None if value is None else _STATES[value]

    def fetched(self, offset: int) -> bool:
        """Record a fetched offset; False if it is already tracked (a re-fetch after a seek)."""
        state = self._state
        if offset in state:
            if self.next_offset is None or offset >= self.next_offset:
                self.next_offset = offset + 1
            return False
        if self.committed is not None and offset < self.committed:
            return False
        order = self._order
        if order and offset < order[-1]:
            self._order = deque(sorted([*order, offset]))
        else:
            order.append(offset)
        state[offset] = _BUFFERED
        if self.next_offset is None or offset >= self.next_offset:
            self.next_offset = offset + 1
        return True

    def deliver(self, offset: int) -> int | None:
        """Mark a buffered offset as handed out; returns its attempt number, or None if stale."""
        state = self._state
        if state.get(offset) != _BUFFERED:
            return None
        state[offset] = _INFLIGHT
        if not self._tries:
            return 1  # first delivery: nothing to count
        attempt = self._tries.pop(offset, 0) + 1
        if attempt > 1:
            self.attempts[offset] = attempt
        return attempt

    def in_flight(self) -> bool:
        """Whether any offset is handed out and not settled (a scan: for rebalances only)."""
        return _INFLIGHT in self._state.values()

    def done(self, offset: int) -> bool:
        """Settle an in-flight offset for good (ack or drop); False if it was not in flight."""
        state = self._state
        if state.get(offset) != _INFLIGHT:
            return False
        state[offset] = _DONE
        return True

    def rewind(self, offset: int) -> list[int]:
        """Forget ``offset`` and every buffered offset after it, so all of them are fetched again.

        Returns the buffered offsets that were dropped. In-flight and done offsets after
        ``offset`` stay tracked, so the re-fetch skips them instead of delivering them twice.
        """
        state = self._state
        dropped = [o for o in self._order if o > offset and state[o] == _BUFFERED]
        forget = {offset, *dropped}
        self._order = deque(o for o in self._order if o not in forget)
        for o in forget:
            previous = state.pop(o, None)
            if previous == _INFLIGHT:  # the nacked offset: remember how often it went out
                self._tries[o] = self.attempts.pop(o, 1)
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
        order, state, attempts = self._order, self._state, self.attempts
        while order and state[order[0]] == _DONE:
            if frontier is not None and order[0] >= frontier:
                break
            offset = order.popleft()
            del state[offset]
            if attempts:
                attempts.pop(offset, None)
        first = next((o for o in order if state[o] != _DONE), None)
        if first is None:
            return frontier
        return first if frontier is None else min(first, frontier)

    def needs_commit(self) -> int | None:
        """The commit point if it is past what was committed, else None."""
        point = self.commit_point()
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point
