"""RabbitMQ secured: amqps:// with the test CA, a user limited to its own vhost, and the errors a
wrong certificate, port, password or permission gives: the right mqkit class, a message naming
the cause, within 10 s, and never the password (in the message or the logs).

Runs against the node of ``adapters/rabbitmq/ci/broker``: AMQPS with the test PKI
(``MQKIT_TEST_CERTS``), vhost ``secure``, user ``mqkit-app`` (every permission there, none
elsewhere) and ``mqkit-readonly`` (may only read there).
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import mqkit
from mqkit import (
    AuthenticationError,
    BrokerUnavailable,
    ConfigError,
    PermissionDenied,
    TLSError,
)
from tests.security.support import LIMIT, certs_of, env_url, fails, password_of, relay, variant

SECURE = "MQKIT_TEST_RABBITMQ_SECURE_URL"
READONLY = "MQKIT_TEST_RABBITMQ_READONLY_URL"
PLAIN = "MQKIT_TEST_RABBITMQ_URL"


def _env(name: str) -> str:
    return env_url(name, "rabbitmq")


@pytest.fixture(scope="module")
def secure_url() -> str:
    return _env(SECURE)


@pytest.fixture(scope="module")
def certs(secure_url: str) -> Path:
    return certs_of(secure_url)


def round_trip(url: str, **options: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, group = f"sec-{tag}", f"g-{tag}"
    with (
        mqkit.connect(url, partitions=1, queue_expires=5, **options) as broker,
        broker.consumer(topic, group=group) as consumer,
    ):
        with broker.producer() as producer:
            producer.send(topic, {"n": 1})
        message = consumer.receive(timeout=10)
        assert message is not None and message.value == {"n": 1}
        message.ack()


def test_the_restricted_user_sends_and_receives_over_tls(secure_url: str, certs: Path) -> None:
    round_trip(secure_url)
    # mutual TLS: the broker checks a client certificate when one is given
    round_trip(secure_url, cert_file=str(certs / "client.pem"), key_file=str(certs / "client.key"))


def test_credentials_from_a_password_file_or_the_environment(
    secure_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = urlsplit(secure_url)
    secret = tmp_path / "password"
    secret.write_text(password_of(secure_url) + "\n")
    without = variant(secure_url, password="").replace(":@", "@", 1)
    assert password_of(secure_url) not in without
    mqkit.connect(without, password_file=str(secret)).close()
    monkeypatch.setenv("MQKIT_USERNAME", parts.username or "")
    monkeypatch.setenv("MQKIT_PASSWORD", password_of(secure_url))
    anonymous = urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", *parts[2:]))
    mqkit.connect(anonymous).close()


def test_a_ca_that_did_not_sign_the_broker_certificate(
    secure_url: str, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = variant(secure_url, ca_file=str(certs / "other-ca.pem"))
    text = fails(TLSError, url, caplog, (password_of(secure_url),))
    assert "TLS handshake failed" in text and "not trusted" in text and "ca_file" in text


def test_the_system_cas_do_not_know_the_test_ca(
    secure_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = variant(secure_url, drop=("ca_file",))
    assert "not trusted" in fails(TLSError, url, caplog, (password_of(secure_url),))


def test_a_host_name_the_certificate_does_not_hold(
    secure_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    parts = urlsplit(secure_url)
    assert parts.hostname and parts.port
    with relay((parts.hostname, parts.port)) as port:
        url = variant(secure_url, host="127.0.0.2", port=port)
        text = fails(TLSError, url, caplog, (password_of(secure_url),))
    # an IP address the certificate does not hold (OpenSSL's "IP address mismatch")
    assert "127.0.0.2" in text and "does not name the IP address" in text


def test_verification_is_off_only_with_tls_insecure_skip_verify(
    secure_url: str, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = variant(secure_url, ca_file=str(certs / "other-ca.pem"))
    fails(TLSError, url, caplog, (password_of(secure_url),))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mqkit"):
        mqkit.connect(url, tls_insecure_skip_verify=True).close()
    assert "tls_insecure_skip_verify is on" in caplog.text
    assert password_of(secure_url) not in caplog.text


def test_a_client_certificate_the_broker_refuses(
    secure_url: str, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # signed by the CA, but for servers only (extendedKeyUsage serverAuth): not a client's
    url = variant(
        secure_url,
        cert_file=str(certs / "wronghost.pem"),
        key_file=str(certs / "wronghost.key"),
    )
    text = fails(TLSError, url, caplog, (password_of(secure_url),))
    assert "refused the client" in text and "cert_file" in text


def test_tls_to_the_plaintext_port(secure_url: str, caplog: pytest.LogCaptureFixture) -> None:
    plain = urlsplit(_env(PLAIN))
    url = variant(secure_url, port=plain.port)
    text = fails(TLSError, url, caplog, (password_of(secure_url),))
    assert "does not speak TLS" in text and f":{plain.port}" in text


def test_plaintext_to_the_tls_port(secure_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = variant(secure_url, scheme="amqp", drop=("ca_file",))
    text = fails(BrokerUnavailable, url, caplog, (password_of(secure_url),))
    assert "TLS port" in text and "amqps://" in text


def test_tls_options_without_tls_are_a_config_error(secure_url: str, certs: Path) -> None:
    plain = _env(PLAIN)
    with pytest.raises(ConfigError, match=r"ca_file.*need TLS"):
        mqkit.connect(plain, ca_file=str(certs / "ca.pem"))


def test_a_wrong_password(secure_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = variant(secure_url, password="not-the-password-4711")
    text = fails(
        AuthenticationError, url, caplog, ("not-the-password-4711", password_of(secure_url))
    )
    assert "login refused" in text and "password" in text


def test_an_unknown_user(secure_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = variant(secure_url, user="nobody-here")
    text = fails(AuthenticationError, url, caplog, (password_of(secure_url),))
    assert "login refused" in text


def test_a_vhost_the_user_may_not_use(secure_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = variant(secure_url, path="/")
    text = fails(PermissionDenied, url, caplog, (password_of(secure_url),))
    assert "virtual host" in text and "no permission" in text


def test_a_user_without_permission_on_the_topic(caplog: pytest.LogCaptureFixture) -> None:
    url = _env(READONLY)
    secret = password_of(url)
    caplog.set_level(logging.DEBUG)
    tag = uuid.uuid4().hex[:8]
    with mqkit.connect(url) as broker:  # logging in works: the vhost is allowed
        started = time.monotonic()
        with pytest.raises(PermissionDenied) as consuming:
            broker.consumer(f"sec-{tag}", group=f"g-{tag}")
        with pytest.raises(PermissionDenied) as sending, broker.producer() as producer:
            producer.send(f"sec-{tag}", {"n": 1})
            producer.flush(5)
        assert time.monotonic() - started < 2 * LIMIT
    for error in (consuming.value, sending.value):
        assert "ACCESS_REFUSED" in str(error) and "permission" in str(error)
        assert secret not in str(error)
    assert f"sec-{tag}" in str(sending.value)
    assert secret not in caplog.text
