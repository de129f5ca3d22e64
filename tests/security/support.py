"""What the secured-broker tests share: URLs from the environment, URL variants, and the check
that a refused connection raises the right error in time without showing a secret."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

import mqkit
from mqkit import MqkitError

#: Every refusal must arrive within this many seconds.
LIMIT = 10.0


def env_url(name: str, broker: str) -> str:
    """The URL in env ``name`` (printed by ``adapters/<broker>/ci/broker start``); in CI a
    missing one fails the run instead of skipping."""
    url = os.environ.get(name)
    if not url:
        if os.environ.get("CI"):
            raise RuntimeError(f"{name} is not set in CI: run adapters/{broker}/ci/broker start")
        pytest.skip(f"set {name} (adapters/{broker}/ci/broker start prints it)")
    return url


def certs_of(url: str) -> Path:
    """The test PKI's directory, from the URL's ``ca_file``."""
    return Path(dict(parse_qsl(urlsplit(url).query))["ca_file"]).parent


def variant(
    url: str,
    *,
    scheme: str | None = None,
    user: str | None = None,
    password: str | None = None,
    host: str | None = None,
    port: int | None = None,
    path: str | None = None,
    drop: tuple[str, ...] = (),
    **query: str,
) -> str:
    """``url`` with some parts replaced (query options set or dropped)."""
    parts = urlsplit(url)
    user = parts.username if user is None else user
    password = parts.password if password is None else password
    auth = f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@" if user else ""
    netloc = f"{auth}{host or parts.hostname}:{port or parts.port}"
    options = {k: v for k, v in parse_qsl(parts.query) if k not in drop}
    options.update(query)
    path = parts.path if path is None else path
    return urlunsplit((scheme or parts.scheme, netloc, path, urlencode(options), ""))


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password
    return password


def fails(
    kind: type[MqkitError],
    url: str,
    caplog: pytest.LogCaptureFixture,
    secrets: tuple[str, ...],
    **options: Any,
) -> str:
    """Connecting to ``url`` raises exactly ``kind`` within the limit, and neither the message
    nor the logs hold any of ``secrets``; the message."""
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(MqkitError) as info:
        mqkit.connect(url, **options).close()
    took = time.monotonic() - started
    assert type(info.value) is kind, repr(info.value)
    assert took < LIMIT, f"{took:.1f} s"
    text = str(info.value)
    for secret in secrets:
        assert secret not in text
        assert secret not in caplog.text
    return text


@contextlib.contextmanager
def relay(target: tuple[str, int], host: str = "127.0.0.2") -> Iterator[int]:
    """A TCP relay on ``host`` to ``target``: the broker answers under another address, one
    its certificate does not name."""
    server = socket.socket()
    try:
        server.bind((host, 0))
    except OSError as exc:  # pragma: no cover - 127.0.0.0/8 is loopback on Linux
        server.close()
        pytest.skip(f"cannot listen on {host}: {exc}")
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(target)
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


def env_vars(names: tuple[str, ...], broker: str) -> dict[str, str]:
    """The variables ``names`` (printed by ``adapters/<broker>/ci/broker start``); in CI a
    missing one fails the run instead of skipping."""
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        why = f"{', '.join(missing)} not set: adapters/{broker}/ci/broker start prints them"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {why}")
        pytest.skip(why)
    return {name: os.environ[name] for name in names}


def refused(
    url: str,
    error: type[Exception],
    logs: pytest.LogCaptureFixture,
    action: Callable[[mqkit.Broker], object] | None = None,
    client_logs: tuple[Path, ...] = (),
) -> str:
    """The message of the ``error`` raised by connecting to ``url`` (and doing ``action``),
    checked to come within the limit and to show the URL's password nowhere: not in the
    message, the log records (``logs`` at DEBUG) or the files a native client logs to."""
    password = urlsplit(url).password
    start = time.monotonic()
    with pytest.raises(error) as caught, mqkit.connect(url) as broker:
        if action is not None:
            action(broker)
    took = time.monotonic() - start
    assert took < LIMIT, f"{error.__name__} after {took:.1f} s"
    message = str(caught.value)
    if password:
        assert password not in message
        assert password not in logs.text
        assert all(password not in repr(record.args) for record in logs.records)
        for path in client_logs:
            if path.exists():
                assert password not in path.read_text(errors="replace")
    return message


def send_one(topic: str) -> Callable[[mqkit.Broker], object]:
    def send(broker: mqkit.Broker) -> None:
        with broker.producer() as producer:
            producer.send(topic, {"n": 1})
            producer.flush()

    return send


def consume_one(topic: str) -> Callable[[mqkit.Broker], object]:
    def consume(broker: mqkit.Broker) -> None:
        with broker.consumer(topic, group=f"g-{uuid.uuid4().hex[:8]}") as consumer:
            consumer.receive(timeout=1)

    return consume
