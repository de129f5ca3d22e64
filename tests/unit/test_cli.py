from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mqkit.cli import main


def test_send_then_consume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    # The group must exist before messages are sent to it.
    sub = runner.invoke(main, ["declare", "t", "--group", "g", "--url", url])
    assert sub.exit_code == 0, sub.output
    sent = runner.invoke(
        main,
        ["send", "t", '{"a": 1}', '"plain"', "--key", "k", "--header", "h=v", "--url", url],
    )
    assert sent.exit_code == 0, sent.output
    ids = sent.stdout.split()
    assert len(ids) == 2
    got = runner.invoke(
        main, ["consume", "t", "--group", "g", "--count", "2", "--timeout", "5", "--url", url]
    )
    assert got.exit_code == 0, got.output
    lines = [json.loads(line) for line in got.stdout.splitlines()]
    assert [m["value"] for m in lines] == [{"a": 1}, "plain"]
    assert [m["id"] for m in lines] == ids
    assert lines[0]["key"] == "k" and lines[0]["headers"] == {"h": "v"}
    assert lines[0]["content_type"] == "application/json"


def test_malformed_json_is_refused_unless_sent_as_text(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    assert runner.invoke(main, ["declare", "t", "--group", "g", "--url", url]).exit_code == 0
    bad = runner.invoke(main, ["send", "t", '{"a": 1', "--url", url])
    assert bad.exit_code == 2
    assert "is not JSON" in bad.output and "--format text" in bad.output
    text = runner.invoke(main, ["send", "t", '{"a": 1', "--format", "text", "--url", url])
    assert text.exit_code == 0, text.output
    got = runner.invoke(main, ["consume", "t", "--group", "g", "--count", "1", "--url", url])
    [line] = [json.loads(line) for line in got.stdout.splitlines()]
    assert line["value"] == '{"a": 1' and line["content_type"].startswith("text/plain")


def test_send_and_an_empty_consume_explain_where_messages_go(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    sent = runner.invoke(main, ["send", "fresh", "1", "--url", url])
    assert sent.exit_code == 0 and "mqkit declare fresh --group" in sent.output
    got = runner.invoke(
        main, ["consume", "fresh", "--group", "new", "--timeout", "0.2", "--url", url]
    )
    assert got.exit_code == 0 and "received 0" in got.output
    assert "mqkit declare" in got.output


def test_bad_url_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["send", "t", "1", "--url", "kafak://x:1"])
    assert result.exit_code != 0
    assert "unknown broker URL scheme 'kafak://'" in result.output


def test_demo_reports_nothing_lost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--url",
            url,
            "--orders",
            "600",
            "--capacity",
            "stock=5000",
            "--capacity",
            "customer-trail=4000",
            "--capacity",
            "customer-status=3000",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "0 lost, 0 duplicated" in " ".join(result.output.split())
