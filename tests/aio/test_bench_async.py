"""`mqkit bench --api async` runs the async API next to the sync one and compares them."""

from __future__ import annotations

import json
import uuid

from click.testing import CliRunner

from mqkit.cli import main


def test_bench_api_async_side_by_side() -> None:
    url = f"memory://bench-{uuid.uuid4().hex[:8]}"
    args = ["bench", "--url", url, "--api", "async", "--messages", "300", "--topics", "1"]
    args += ["--repeat", "1", "--latency-seconds", "0.5", "--rate", "200", "--no-raw", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{") :])
    rows = {(r["client"], r["test"]): r for r in doc["results"]}
    for client in ("mqkit", "mqkit-async"):
        for test in ("produce", "consume", "latency"):
            row = rows[(client, test)]
            assert row["lost"] == row["duplicated"] == 0
            assert row["received"] == row["sent"] > 0
    compared = {r["test"]: r for r in doc["async_vs_sync"]}
    assert compared["produce"]["ratio"] > 0 and compared["consume"]["ratio"] > 0
    assert compared["latency"]["async_p99_ms"] > 0
