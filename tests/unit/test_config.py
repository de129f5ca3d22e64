from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import mqkit
from mqkit import ConfigError
from mqkit.config import DEFAULT_URL, parse_url, resolve


def test_parse_full_url() -> None:
    url = parse_url("amqp://user:p%40ss@rabbit:5672/vhost?heartbeat=10")
    assert url.scheme == "amqp"
    assert url.hosts == (("rabbit", 5672),)
    assert (url.username, url.password) == ("user", "p@ss")
    assert url.path == "/vhost"
    assert url.params == {"heartbeat": "10"}
    assert "p@ss" not in url.redacted() and "p%40ss" not in url.redacted()


def test_parse_multi_host_and_ipv6() -> None:
    url = parse_url("kafka://a:9092,b:9093,[::1]:9094")
    assert url.hosts == (("a", 9092), ("b", 9093), ("::1", 9094))


def test_sqlite_paths() -> None:
    assert parse_url("sqlite:///rel/q.db").path == "/rel/q.db"
    assert parse_url("sqlite:////abs/q.db").path == "//abs/q.db"


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("", "empty"),
        ("localhost:9092", "no scheme"),
        ("1kafka://x", "not a valid URL scheme"),
        ("kafka://host:99999", "port"),
        ("kafka://host:abc", "port"),
        ("amqp://user@:5672/", "empty host"),
    ],
)
def test_malformed_urls_name_the_problem(bad: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_url(bad)


def test_unknown_scheme_lists_installed_backends() -> None:
    with pytest.raises(ConfigError) as info:
        mqkit.connect("nats://127.0.0.1:4222")
    assert "unknown broker URL scheme 'nats://'" in str(info.value)
    assert "memory" in str(info.value) and "sqlite" in str(info.value)


def test_missing_adapter_package_says_what_to_install() -> None:
    with pytest.raises(ConfigError) as info:
        mqkit.connect("pulsar://127.0.0.1:6650")
    text = str(info.value)
    assert "'mqkit-<backend>'" in text and "pip install" in text, "how adapters are named"
    assert "README" in text, "where the backends are listed"


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(ConfigError, match="visiblity_timeout"):
        mqkit.connect("memory://opts?visiblity_timeout=3")
    with pytest.raises(ConfigError, match="not a number"):
        mqkit.connect("memory://opts", visibility_timeout="soon")


def test_bad_sqlite_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no host"):
        mqkit.connect("sqlite://host/x.db")
    with pytest.raises(ConfigError, match="no database file"):
        mqkit.connect("sqlite://")
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="cannot open the SQLite queue"):
        mqkit.connect(f"sqlite:///{not_a_db}")


def test_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MQKIT_URL", raising=False)
    assert resolve(cwd=tmp_path).url == DEFAULT_URL
    (tmp_path / "pyproject.toml").write_text('[tool.mqkit]\nurl = "memory://py"\n')
    assert resolve(cwd=tmp_path).url == "memory://py"
    (tmp_path / "mqkit.toml").write_text('url = "memory://toml"\n[options]\nprefetch = 4\n')
    settings = resolve(cwd=tmp_path)
    assert (settings.url, dict(settings.options)) == ("memory://toml", {"prefetch": 4})
    monkeypatch.setenv("MQKIT_URL", "memory://env")
    assert resolve(cwd=tmp_path).url == "memory://env"
    assert resolve("memory://arg", cwd=tmp_path).url == "memory://arg"


def test_connect_uses_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MQKIT_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mqkit.toml").write_text('url = "sqlite:///cfg.db"\n')
    with mqkit.connect() as broker:
        assert broker.url.path == "/cfg.db"
    assert (tmp_path / "cfg.db").exists()


def test_broken_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MQKIT_URL", raising=False)
    (tmp_path / "mqkit.toml").write_text("url = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(cwd=tmp_path)
    (tmp_path / "mqkit.toml").write_text("other = 1\n")
    with pytest.raises(ConfigError, match="missing 'url"):
        resolve(cwd=tmp_path)


def test_register_a_backend_in_process() -> None:
    calls: list[str] = []

    def factory(url: mqkit.BrokerURL, options: Mapping[str, Any]) -> Any:
        calls.append(url.raw)
        from mqkit.backends.memory import open_backend

        return open_backend(mqkit.parse_url("memory://custom"), options)

    mqkit.register("custom", factory)
    with mqkit.connect("custom://anything") as broker:
        assert broker.features.persistent is False
    assert calls == ["custom://anything"]


def test_names_must_be_portable() -> None:
    with mqkit.connect("memory://names") as broker:
        with pytest.raises(ConfigError, match="topic name"):
            broker.producer().send("bad topic!", 1)
        with pytest.raises(ConfigError, match="group name"):
            broker.consumer("ok", group="")
        with pytest.raises(ConfigError, match="at least one topic"):
            broker.consumer([], group="g")
