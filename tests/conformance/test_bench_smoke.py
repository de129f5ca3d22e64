"""``mqkit bench`` runs on every backend and accounts for every message (no speed asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mqkit.cli import main


def test_bench_runs_and_loses_nothing(url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--url",
            url,
            # Few messages, a low rate: a smoke test. Kafka consumers that commit each record
            # take about 115 a second, so 300 at 200/s made this case half a minute on each
            # Kafka backend.
            "--messages",
            "100",
            "--size",
            "256",
            "--topics",
            "1,3",
            "--rate",
            "100",
            "--latency-seconds",
            "0.5",
            "--repeat",
            "2",
            "--confirm-each",
            "20",
            # A client stuck in its library fails the run 30 s after this, well inside the
            # test's own timeout, with the bench's error rather than pytest's.
            "--timeout",
            "60",
            "--json",
            "--report",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout[result.stdout.index("{") :])
    assert doc["lost"] == 0 and doc["duplicated"] == 0
    tests = {(m["client"], m["test"], m["topics"]) for m in doc["results"]}
    assert {
        ("mqkit", "produce", 1),
        ("mqkit", "consume", 1),
        ("mqkit", "latency", 1),
        ("mqkit", "produce", 3),
        ("mqkit", "consume", 3),
        ("mqkit", "produce-each", 1),
    } <= tests
    assert all(m["received"] == m["sent"] and m["runs"] == 2 for m in doc["results"])
    if url.startswith("sqlite"):
        assert {r["test"] for r in doc["ratios"]} == {"produce", "consume", "produce-each"}
    assert (tmp_path / "report.md").read_text().startswith("# mqkit bench report")
    assert (tmp_path / "throughput.png").stat().st_size > 1000
