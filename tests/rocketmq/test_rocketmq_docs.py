"""docs/rocketmq.md shows the options as both drivers declare them (one declaration each)."""

from __future__ import annotations

from pathlib import Path

from mqkit_rocketmq.remoting.settings import Settings as RemotingSettings
from mqkit_rocketmq.settings import Settings

from mqkit.adapter import options_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "rocketmq.md"


def test_the_docs_show_the_grpc_drivers_options_table() -> None:
    assert options_table(Settings) in DOC.read_text()


def test_the_docs_show_the_remoting_drivers_options_table() -> None:
    assert options_table(RemotingSettings) in DOC.read_text()
