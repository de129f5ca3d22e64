"""The options table in docs/rabbitmq.md is the one the declared options render."""

from __future__ import annotations

from pathlib import Path

from mqkit_rabbitmq.settings import Settings

from mqkit.adapter import options_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "rabbitmq.md"


def test_docs_show_the_declared_options() -> None:
    assert options_table(Settings) in DOC.read_text(encoding="utf-8")
