"""Kafka's secured listeners (adapters/kafka/ci/broker): each refusal is the right mqkit error,
names its cause, arrives within 10 s and shows no password, in the message or in the logs.

The broker runs, besides its plaintext listener, SASL_SSL with SCRAM-SHA-512 (users mqkit-app,
allowed everything but topics ``private.*``, and mqkit-denied, with no ACL), SSL with a required
client certificate, and two TLS listeners serving a wrong-host and an expired certificate.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import mqkit
from mqkit.errors import AuthenticationError, PermissionDenied, TLSError
from tests.security.support import consume_one, env_vars, refused, send_one

#: The exports of adapters/kafka/ci/broker this module needs.
NEEDED = (
    "MQKIT_TEST_KAFKA_URL",
    "MQKIT_TEST_KAFKA_SECURE_URL",
    "MQKIT_TEST_KAFKA_DENIED_URL",
    "MQKIT_TEST_KAFKA_MTLS_URL",
    "MQKIT_TEST_KAFKA_WRONGHOST_PORT",
    "MQKIT_TEST_KAFKA_EXPIRED_PORT",
    "MQKIT_TEST_CERTS",
)


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return env_vars(NEEDED, "kafka")


@pytest.fixture(scope="module")
def certs(env: dict[str, str]) -> Path:
    return Path(env["MQKIT_TEST_CERTS"])


@pytest.fixture(scope="module")
def sasl_port(env: dict[str, str]) -> int:
    port = urlsplit(env["MQKIT_TEST_KAFKA_SECURE_URL"]).port
    assert port is not None
    return port


@pytest.fixture(scope="module")
def plain_port(env: dict[str, str]) -> int:
    port = urlsplit(env["MQKIT_TEST_KAFKA_URL"]).port
    assert port is not None
    return port


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record, kafka-python's DEBUG included (it logs its whole configuration)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def secure_url(env: dict[str, str], **replace: str) -> str:
    url = env["MQKIT_TEST_KAFKA_SECURE_URL"]
    for old, new in replace.items():
        url = url.replace(old, new)
    return url


def tls_url(port: int, certs: Path, ca: str = "ca.pem", extra: str = "") -> str:
    return f"kafka://localhost:{port}?tls=true&ca_file={certs / ca}{extra}"


# -- what works ---------------------------------------------------------------------------------


def test_sasl_ssl_round_trip(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    with mqkit.connect(env["MQKIT_TEST_KAFKA_SECURE_URL"]) as broker:
        with broker.producer() as producer:
            producer.send(topic, {"n": 1})
            producer.flush()
        with broker.consumer(topic, group=f"g-{uuid.uuid4().hex[:8]}") as consumer:
            message = consumer.receive(timeout=20)
            assert message is not None and message.value == {"n": 1}
            message.ack()
    password = urlsplit(env["MQKIT_TEST_KAFKA_SECURE_URL"]).password
    assert password and password not in logs.text


def test_password_from_a_file(env: dict[str, str], tmp_path: Path) -> None:
    parts = urlsplit(env["MQKIT_TEST_KAFKA_SECURE_URL"])
    secret = tmp_path / "password"
    secret.write_text(f"{parts.password}\n")
    url = parts._replace(netloc=f"mqkit-app@{parts.hostname}:{parts.port}").geturl()
    with mqkit.connect(f"{url}&password_file={secret}") as broker:
        broker.ping(5)


def test_mutual_tls_round_trip(env: dict[str, str]) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    with mqkit.connect(env["MQKIT_TEST_KAFKA_MTLS_URL"]) as broker:
        send_one(topic)(broker)


def test_skipping_verification_only_when_asked(
    env: dict[str, str], certs: Path, logs: pytest.LogCaptureFixture
) -> None:
    port = int(env["MQKIT_TEST_KAFKA_WRONGHOST_PORT"])
    refused(tls_url(port, certs), TLSError, logs)
    with mqkit.connect(tls_url(port, certs, extra="&tls_insecure_skip_verify=true")) as broker:
        broker.ping(5)
    assert "tls_insecure_skip_verify is on" in logs.text


# -- TLS refusals ---------------------------------------------------------------------------------


def test_wrong_ca(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    message = refused(secure_url(env, **{"ca.pem": "other-ca.pem"}), TLSError, logs)
    assert "CA that is not trusted" in message and "ca_file" in message


def test_wrong_host(env: dict[str, str], certs: Path, logs: pytest.LogCaptureFixture) -> None:
    port = int(env["MQKIT_TEST_KAFKA_WRONGHOST_PORT"])
    message = refused(tls_url(port, certs), TLSError, logs)
    assert "does not name the host" in message


def test_expired_certificate(
    env: dict[str, str], certs: Path, logs: pytest.LogCaptureFixture
) -> None:
    port = int(env["MQKIT_TEST_KAFKA_EXPIRED_PORT"])
    message = refused(tls_url(port, certs), TLSError, logs)
    assert "expired" in message


def test_tls_to_the_plaintext_port(
    plain_port: int, certs: Path, logs: pytest.LogCaptureFixture
) -> None:
    message = refused(tls_url(plain_port, certs), TLSError, logs)
    assert "plaintext port" in message


def test_plaintext_to_the_tls_port(sasl_port: int, logs: pytest.LogCaptureFixture) -> None:
    message = refused(f"kafka://localhost:{sasl_port}", TLSError, logs)
    assert "speaks TLS" in message and "tls=true" in message


def test_mutual_tls_without_a_client_certificate(
    env: dict[str, str], certs: Path, logs: pytest.LogCaptureFixture
) -> None:
    port = urlsplit(env["MQKIT_TEST_KAFKA_MTLS_URL"]).port
    assert port is not None
    message = refused(tls_url(port, certs), TLSError, logs)
    assert "client certificate" in message


# -- authentication -------------------------------------------------------------------------------


def test_wrong_password(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    password = urlsplit(env["MQKIT_TEST_KAFKA_SECURE_URL"]).password
    url = secure_url(env, **{f":{password}@": ":not-the-password@"})
    message = refused(url, AuthenticationError, logs)
    assert "mqkit-app" in message and "invalid credentials" in message
    assert "not-the-password" not in message and "not-the-password" not in logs.text


def test_unknown_user(env: dict[str, str], logs: pytest.LogCaptureFixture) -> None:
    message = refused(secure_url(env, **{"mqkit-app:": "nobody:"}), AuthenticationError, logs)
    assert "'nobody'" in message


def test_a_mechanism_the_broker_does_not_offer(
    env: dict[str, str], logs: pytest.LogCaptureFixture
) -> None:
    url = secure_url(env, **{"scram-sha-512": "scram-sha-256"})
    message = refused(url, AuthenticationError, logs)
    assert "SCRAM-SHA-256" in message and "SCRAM-SHA-512" in message


# -- authorization --------------------------------------------------------------------------------


def test_a_user_without_any_acl_cannot_send(
    env: dict[str, str], logs: pytest.LogCaptureFixture
) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    url = env["MQKIT_TEST_KAFKA_DENIED_URL"]
    message = refused(url, PermissionDenied, logs, send_one(topic))
    assert "not authorized" in message and topic in message


def test_a_user_without_any_acl_cannot_consume(
    env: dict[str, str], logs: pytest.LogCaptureFixture
) -> None:
    url = env["MQKIT_TEST_KAFKA_DENIED_URL"]
    message = refused(url, PermissionDenied, logs, consume_one(f"t-{uuid.uuid4().hex[:12]}"))
    assert "not authorized" in message


@pytest.mark.parametrize("action", [send_one, consume_one], ids=["send", "consume"])
def test_a_topic_the_user_is_denied(
    env: dict[str, str],
    logs: pytest.LogCaptureFixture,
    action: Callable[[str], Callable[[mqkit.Broker], object]],
) -> None:
    topic = f"private.{uuid.uuid4().hex[:12]}"
    url = env["MQKIT_TEST_KAFKA_SECURE_URL"]
    message = refused(url, PermissionDenied, logs, action(topic))
    assert "not authorized" in message and topic in message
