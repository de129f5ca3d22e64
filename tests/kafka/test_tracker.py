"""The commit bookkeeping on its own: commits never pass an unsettled offset."""

from __future__ import annotations

# the adapter is an editable install that mypy may not resolve from the repository root
from mqkit_kafka._tracker import (
    PartitionTracker,
    State,
)


def fetched(tracker: PartitionTracker, *offsets: int) -> None:
    for offset in offsets:
        assert tracker.fetched(offset)
        assert tracker.deliver(offset) == 1


def test_out_of_order_acks_never_commit_past_a_gap() -> None:
    t = PartitionTracker(epoch=1, position=0)
    fetched(t, *range(10))
    t.done(7)
    assert t.needs_commit() is None  # 0 is still in flight
    for offset in (0, 1, 2):
        t.done(offset)
    assert t.needs_commit() == 3
    t.committed = 3
    t.done(5)
    assert t.needs_commit() is None  # 3 and 4 unsettled
    t.done(3)
    t.done(4)
    assert t.needs_commit() == 6  # 5 done, 6 not
    for offset in (6, 8, 9):
        t.done(offset)
    assert t.needs_commit() == 10


def test_gaps_in_offsets_from_control_records_or_compaction() -> None:
    t = PartitionTracker(epoch=1, position=100)
    fetched(t, 100, 103, 107)
    t.done(100)
    assert t.needs_commit() == 103
    t.done(107)
    assert t.needs_commit() == 103
    t.done(103)
    assert t.needs_commit() == 108


def test_rewind_drops_buffered_successors_and_keeps_inflight_ones() -> None:
    t = PartitionTracker(epoch=1, position=0)
    fetched(t, 0, 1, 2)
    for offset in (3, 4):
        assert t.fetched(offset)  # buffered, not delivered
    t.done(1)
    assert t.rewind(0) == [3, 4]
    assert t.needs_commit() is None  # 0 must come again
    assert t.fetched(0)  # re-fetch after the seek
    assert not t.fetched(1)  # acked: skipped
    assert not t.fetched(2)  # still in flight: not delivered twice
    assert t.fetched(3)
    assert t.deliver(0) == 2  # second attempt
    assert t.state(2) is State.INFLIGHT
    t.done(0)
    t.done(2)
    assert t.needs_commit() == 3


def test_stale_settlements_are_refused() -> None:
    t = PartitionTracker(epoch=1, position=0)
    fetched(t, 0)
    assert t.done(0)
    assert not t.done(0)
    assert t.deliver(5) is None
    assert not t.fetched(0) or t.state(0) is State.BUFFERED


def test_offsets_below_the_commit_point_are_ignored() -> None:
    t = PartitionTracker(epoch=1, position=10)
    assert not t.fetched(9)
    assert t.fetched(10)


def test_attempts_count_every_redelivery_across_rewinds() -> None:
    t = PartitionTracker(epoch=1, position=0)
    fetched(t, 0, 1)
    assert t.rewind(0) == []  # nack 0: fetched and delivered again
    assert t.fetched(0)
    assert t.deliver(0) == 2
    assert t.rewind(0) == []
    assert t.fetched(0)
    assert not t.fetched(1)  # the re-fetch skips 1, still in flight
    assert t.deliver(0) == 3
    assert t.done(0) and t.done(1)
    assert t.needs_commit() == 2


def test_a_redelivered_offset_dropped_while_buffered_keeps_its_count() -> None:
    t = PartitionTracker(epoch=1, position=5)
    fetched(t, 5, 6)
    t.rewind(6)  # nack 6
    assert t.fetched(6)  # fetched again, buffered
    assert t.rewind(5) == [6]  # nack 5 drops the buffered 6
    assert t.fetched(5) and t.fetched(6)
    assert t.deliver(5) == 2
    assert t.deliver(6) == 2
    assert t.deliver(6) is None  # already in flight
