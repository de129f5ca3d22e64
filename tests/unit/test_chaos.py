"""``mqkit chaos`` without a fault, on the embedded backend: every confirmed message arrives,
once, and the report adds up; the CLI checks its options."""

from __future__ import annotations

from click.testing import CliRunner

from mqkit.chaos import run_chaos
from mqkit.cli import main


def test_a_quiet_run_receives_every_confirmed_message_once() -> None:
    report = run_chaos("memory://chaos-quiet", duration=2.0, rate=200, settle=5)
    assert report.sent >= 350
    assert report.confirmed == report.sent
    assert report.received == report.confirmed
    assert report.lost == 0 and report.duplicates == 0 and report.duplicate_effects == 0
    assert report.unavailable < 1.0
    assert report.errors == {}
    assert sum(second.received for second in report.timeline) == report.received
    assert report.ok
    assert "| **0** |" in report.to_markdown()


def test_fault_options_come_in_pairs() -> None:
    result = CliRunner().invoke(
        main, ["chaos", "--url", "memory://x", "--duration", "1", "--kill-at", "1"]
    )
    assert result.exit_code == 2
    assert "--kill-at with --kill-cmd" in result.output
