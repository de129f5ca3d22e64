"""docs/kafka.md shows the options exactly as ``Settings`` declares them."""

from __future__ import annotations

from mqkit_kafka.settings import Settings

from mqkit.adapter import options_table
from tests.kafka.conftest import ROOT


def test_the_docs_options_table_is_the_declared_one() -> None:
    docs = (ROOT / "docs" / "kafka.md").read_text(encoding="utf-8")
    assert options_table(Settings) in docs
