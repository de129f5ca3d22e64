"""``mqkit chaos`` without a fault, on the embedded backend: every confirmed message arrives,
once, and the report adds up; the CLI checks its options."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from mqkit import Broker, PermissionDenied, Producer
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


class _RefusingProducer:
    """Holds sends until a flush; its third flush fails and drops what it held, as an adapter
    whose broker refused background sends reports it at the next call."""

    def __init__(self, inner: Producer) -> None:
        self._inner = inner
        self._held: list[tuple[str, Any, dict[str, Any]]] = []
        self._flushes = 0

    def send(self, topic: str, value: Any, **options: Any) -> None:
        self._held.append((topic, value, options))

    def flush(self, timeout: float | None = None) -> None:
        self._flushes += 1
        held, self._held = self._held, []
        if self._flushes == 3:
            raise PermissionDenied("no writable queue (refused in the background)")
        for topic, value, options in held:
            self._inner.send(topic, value, **options)
        self._inner.flush(timeout=timeout)

    def close(self) -> None:
        self._inner.close()


def test_messages_of_a_failed_flush_never_count_as_confirmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Broker.producer
    monkeypatch.setattr(
        Broker, "producer", lambda self, **kw: _RefusingProducer(real(self, **kw))
    )
    report = run_chaos("memory://chaos-refused", duration=1.5, rate=200, settle=3)
    assert report.errors and report.confirmed < report.sent
    assert report.lost == 0, "a message refused in the background was counted as confirmed"
    assert report.received == report.confirmed
