"""RocketMQ's secured endpoints (adapters/rocketmq/ci/broker), through the 5.x gRPC client:
each refusal is the right mqkit error, names its cause, arrives within 10 s and shows no
password, in the message, in the captured logs or in the client's own log file.

The CI cluster's proxy takes TLS (the test PKI) and plaintext on one port; a second cluster runs
ACL 2.0 with TLS: user mqkit-app may use every topic and group but topics ``private*``,
mqkit-denied has no right at all. The 4.x remoting driver's tests are in
tests/rocketmq/test_rocketmq_remoting.py (another virtualenv).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import mqkit
from mqkit.errors import AuthenticationError, ConfigError, PermissionDenied, TLSError
from tests.security import support
from tests.security.support import consume_one, env_vars, send_one

NEEDED = (
    "MQKIT_TEST_ROCKETMQ_URL",
    "MQKIT_TEST_ROCKETMQ_TLS_URL",
    "MQKIT_TEST_ROCKETMQ_SECURE_URL",
    "MQKIT_TEST_ROCKETMQ_DENIED_URL",
    "MQKIT_TEST_CERTS",
)
#: Where rocketmq-python-client writes its own log (not through ``logging``).
CLIENT_LOG = Path.home() / "logs" / "rocketmq_python" / "rocketmq_client.log"


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return env_vars(NEEDED, "rocketmq")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


def refused(
    url: str,
    error: type[Exception],
    logs: pytest.LogCaptureFixture,
    action: Callable[[mqkit.Broker], object] | None = None,
) -> str:
    """:func:`tests.security.support.refused`, also reading the 5.x client's own log file."""
    return support.refused(url, error, logs, action, (CLIENT_LOG,))


def replaced(url: str, old: str, new: str) -> str:
    assert old in url
    return url.replace(old, new, 1)


# -- what works ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["MQKIT_TEST_ROCKETMQ_TLS_URL", "MQKIT_TEST_ROCKETMQ_SECURE_URL"])
def test_round_trip(env: dict[str, str], logs: pytest.LogCaptureFixture, name: str) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    with mqkit.connect(env[name]) as broker, broker.consumer(topic, group=group) as consumer:
        send_one(topic)(broker)
        message = consumer.receive(timeout=20)
        assert message is not None and message.value == {"n": 1}
        message.ack()
    password = urlsplit(env[name]).password
    if password:
        assert password not in logs.text


def test_keys_from_the_environment(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    parts = urlsplit(env["MQKIT_TEST_ROCKETMQ_SECURE_URL"])
    monkeypatch.setenv("MQKIT_USERNAME", parts.username or "")
    monkeypatch.setenv("MQKIT_PASSWORD", parts.password or "")
    url = parts._replace(netloc=f"{parts.hostname}:{parts.port}").geturl()
    with mqkit.connect(url) as broker:
        broker.ping(5)


def test_no_way_to_skip_verification(env: dict[str, str]) -> None:
    url = env["MQKIT_TEST_ROCKETMQ_TLS_URL"] + "&tls_insecure_skip_verify=true"
    with pytest.raises(ConfigError, match="gRPC always verifies"):
        mqkit.connect(url)


def test_tls_files_need_tls(env: dict[str, str]) -> None:
    url = replaced(env["MQKIT_TEST_ROCKETMQ_TLS_URL"], "tls=true&", "")
    with pytest.raises(ConfigError, match="need tls=true"):
        mqkit.connect(url)


# -- TLS refusals ---------------------------------------------------------------------------------


def test_wrong_ca(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    url = replaced(env["MQKIT_TEST_ROCKETMQ_SECURE_URL"], "ca.pem", "other-ca.pem")
    message = refused(url, TLSError, logs)
    assert "not signed by a CA in ca_file" in message


def test_wrong_host(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    # 127.0.0.2 reaches the proxy too (loopback), but the certificate names only
    # localhost and 127.0.0.1.
    url = replaced(env["MQKIT_TEST_ROCKETMQ_TLS_URL"], "localhost", "127.0.0.2")
    message = refused(url, TLSError, logs)
    assert "does not name the host" in message


def test_tls_to_a_plaintext_port(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    # The name server speaks plaintext only.
    query = parse_qs(urlsplit(env["MQKIT_TEST_ROCKETMQ_URL"]).query)
    port = query["namesrv"][0].rsplit(":", 1)[1]
    certs = Path(env["MQKIT_TEST_CERTS"])
    url = f"rocketmq://localhost:{port}?tls=true&ca_file={certs / 'ca.pem'}"
    message = refused(url, TLSError, logs)
    assert "plaintext port" in message


# -- ACL ------------------------------------------------------------------------------------------


def test_wrong_secret_key(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    url = env["MQKIT_TEST_ROCKETMQ_SECURE_URL"]
    password = urlsplit(url).password or ""
    message = refused(replaced(url, f":{password}@", ":not-the-key@"), AuthenticationError, logs)
    assert "signature" in message
    assert "not-the-key" not in message and "not-the-key" not in logs.text


def test_unknown_user(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    url = replaced(env["MQKIT_TEST_ROCKETMQ_SECURE_URL"], "mqkit-app:", "nobody:")
    message = refused(url, AuthenticationError, logs)
    assert "nobody is not found" in message


def test_no_credentials(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    parts = urlsplit(env["MQKIT_TEST_ROCKETMQ_SECURE_URL"])
    url = parts._replace(netloc=f"{parts.hostname}:{parts.port}").geturl()
    message = refused(url, AuthenticationError, logs)
    assert "username cannot be null" in message


@pytest.mark.parametrize("action", [send_one, consume_one], ids=["send", "consume"])
def test_a_user_without_rights(
    env: dict[str, str],
    logs: pytest.LogCaptureFixture,
    action: Callable[[str], Callable[[mqkit.Broker], object]],
) -> None:
    url = env["MQKIT_TEST_ROCKETMQ_DENIED_URL"]
    message = refused(url, PermissionDenied, logs, action(f"t-{uuid.uuid4().hex[:12]}"))
    assert "mqkit-denied has no permission" in message


@pytest.mark.parametrize("action", [send_one, consume_one], ids=["send", "consume"])
def test_a_topic_the_user_is_denied(
    env: dict[str, str],
    logs: pytest.LogCaptureFixture,
    action: Callable[[str], Callable[[mqkit.Broker], object]],
) -> None:
    topic = f"private.{uuid.uuid4().hex[:12]}"
    message = refused(env["MQKIT_TEST_ROCKETMQ_SECURE_URL"], PermissionDenied, logs, action(topic))
    assert "no permission" in message and "deny" in message
