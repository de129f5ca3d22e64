from __future__ import annotations

import traceback

from mqkit.deadletter import ERROR_LIMIT, TRACEBACK_LIMIT, traceback_summary


def test_traceback_summary_keeps_the_innermost_part_within_the_limit() -> None:
    def fail() -> None:
        try:
            raise ValueError("x" * 3 * TRACEBACK_LIMIT)
        except ValueError as cause:
            raise KeyError("innermost") from cause

    try:
        fail()
    except KeyError as exc:
        summary = traceback_summary(exc)
        full = "".join(traceback.format_exception(exc))
    assert len(summary) == TRACEBACK_LIMIT < len(full)
    assert summary.endswith("KeyError: 'innermost'\n")
    assert ERROR_LIMIT == 500
