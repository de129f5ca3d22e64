"""Presents benchmark measurements: terminal table, JSON, Markdown and a PNG chart."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from mqkit.benchmark.runner import Measurement, Workload


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }


def ratios(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """mqkit rate / raw rate for every (backend, test, topics) measured both ways."""
    raw = {(m.backend, m.test, m.topics): m for m in results if m.client == "raw"}
    out = []
    for m in results:
        base = raw.get((m.backend, m.test, m.topics))
        if m.client == "mqkit" and base is not None and base.rate > 0 and m.test != "latency":
            out.append(
                {
                    "backend": m.backend,
                    "test": m.test,
                    "topics": m.topics,
                    "mqkit_rate": m.rate,
                    "raw_rate": base.rate,
                    "ratio": round(m.rate / base.rate, 3),
                }
            )
    return out


def async_ratios(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """mqkit.aio against the sync API (``--api async``): rate ratio per throughput test, and
    latency p99 at the same offered rate."""
    sync = {(m.backend, m.test, m.topics): m for m in results if m.client == "mqkit"}
    out = []
    for m in results:
        base = sync.get((m.backend, m.test, m.topics))
        if m.client != "mqkit-async" or base is None:
            continue
        row: dict[str, Any] = {"backend": m.backend, "test": m.test, "topics": m.topics}
        if m.test == "latency":
            row["sync_p99_ms"] = base.latency_ms.get("p99", 0.0)
            row["async_p99_ms"] = m.latency_ms.get("p99", 0.0)
        elif base.rate > 0:
            row.update(sync_rate=base.rate, async_rate=m.rate, ratio=round(m.rate / base.rate, 3))
        else:
            continue
        out.append(row)
    return out


def document(work: Workload, results: Sequence[Measurement]) -> dict[str, Any]:
    return {
        "machine": machine(),
        "workload": work.__dict__,
        "results": [m.as_dict() for m in results],
        "ratios": ratios(results),
        "async_vs_sync": async_ratios(results),
        "lost": sum(m.lost for m in results),
        "duplicated": sum(m.duplicated for m in results),
    }


def _integrity(m: Measurement) -> str:
    if m.lost or m.duplicated:
        return f"LOST {m.lost} / DUP {m.duplicated}"
    return "ok"


def table(results: Sequence[Measurement]) -> Table:
    out = Table(title="mqkit bench")
    for name in (
        "backend",
        "client",
        "test",
        "topics",
        "msg/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "sent/recv",
        "integrity",
    ):
        out.add_column(name, justify="left" if name in ("backend", "client", "test") else "right")
    for m in results:
        lat = m.latency_ms
        out.add_row(
            m.backend,
            m.client,
            m.test,
            str(m.topics),
            f"{m.rate:,.0f}",
            f"{m.mb_per_s:.2f}",
            f"{lat['p50']:.2f}" if lat else "",
            f"{lat['p99']:.2f}" if lat else "",
            f"{lat['max']:.2f}" if lat else "",
            f"{m.sent}/{m.received}",
            _integrity(m),
        )
    return out


def markdown(work: Workload, results: Sequence[Measurement]) -> str:
    doc = document(work, results)
    lines = [
        "# mqkit bench report",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in doc["machine"].items()),
        "",
        "Workload: " + ", ".join(f"{k}={v}" for k, v in doc["workload"].items()),
        "",
        f"Each row is the median of {work.repeat} run(s) (of an even number, the slower middle "
        "one), raw and mqkit taking turns workload by workload; sent, received, lost and "
        "duplicated are summed over all of them.",
        "",
        "| backend | client | test | topics | msg/s | MB/s | p50 ms | p95 ms | p99 ms | max ms "
        "| sent | received | lost | duplicated |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        lat = m.latency_ms
        cells = [f"{lat[k]:.2f}" if lat else "" for k in ("p50", "p95", "p99", "max")]
        lines.append(
            f"| {m.backend} | {m.client} | {m.test} | {m.topics} | {m.rate:,.0f} | "
            f"{m.mb_per_s:.2f} | {' | '.join(cells)} | {m.sent} | {m.received} | {m.lost} | "
            f"{m.duplicated} |"
        )
    if doc["ratios"]:
        lines += [
            "",
            "mqkit throughput relative to the raw client in the same run:",
            "",
            "| backend | test | topics | mqkit msg/s | raw msg/s | mqkit / raw |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in doc["ratios"]:
            lines.append(
                f"| {r['backend']} | {r['test']} | {r['topics']} | {r['mqkit_rate']:,.0f} | "
                f"{r['raw_rate']:,.0f} | {r['ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _short(backend: str) -> str:
    """The scheme plus the URL's options: tells apart two URLs of one backend in the chart."""
    scheme = backend.split(":", 1)[0]
    options = backend.split("?", 1)[1] if "?" in backend else ""
    return f"{scheme}?{options}" if options else scheme


def chart(results: Sequence[Measurement], path: Path) -> None:
    """A bar chart of throughput per backend and test (needs ``pip install mqkit[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("the PNG chart needs matplotlib: pip install 'mqkit[bench]'") from exc
    rows = [m for m in results if m.test in ("produce", "consume", "produce-each")]
    groups = list(dict.fromkeys((m.backend, m.test, m.topics) for m in rows))
    rate = {(m.backend, m.test, m.topics, m.client): m.rate for m in rows}
    fig, ax = plt.subplots(figsize=(max(6, len(groups) * 0.6), 5))
    for offset, client, color in ((-0.2, "raw", "#999999"), (0.2, "mqkit", "#4c72b0")):
        xs = [i + offset for i, g in enumerate(groups) if (*g, client) in rate]
        ys = [rate[(*g, client)] for g in groups if (*g, client) in rate]
        ax.bar(xs, ys, width=0.4, color=color, label=client)
    labels = [f"{_short(backend)} {test}\n{topics} topic(s)" for backend, test, topics in groups]
    ax.set_xticks(range(len(groups)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("messages / s (log scale)")
    ax.set_title("throughput: raw client vs mqkit, same run")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_report(work: Workload, results: Sequence[Measurement], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.md").write_text(markdown(work, results))
    (directory / "report.json").write_text(json.dumps(document(work, results), indent=2))
    chart(results, directory / "throughput.png")
