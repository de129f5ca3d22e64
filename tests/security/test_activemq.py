"""ActiveMQ secured: stomp+ssl:// with the test CA, login required, an authorization map, and the
errors a wrong certificate, port, password or permission gives: the right mqkit class, a message
naming the cause, within 10 s, and never the password (in the message or the logs).

Runs against the secured broker of ``adapters/activemq/ci/broker`` (a second broker in the CI
broker's JVM): STOMP over TLS with the test PKI (``MQKIT_TEST_CERTS``), user ``mqkit-app`` (may
use mqkit's destinations only: ``VirtualTopic.>``, ``Consumer.>``, ``mqkit.>``, temporary
queues) and ``mqkit-denied`` (may use nothing).
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

SECURE = "MQKIT_TEST_ACTIVEMQ_SECURE_URL"
DENIED = "MQKIT_TEST_ACTIVEMQ_DENIED_URL"
PLAIN = "MQKIT_TEST_ACTIVEMQ_URL"


def _env(name: str) -> str:
    return env_url(name, "activemq")


@pytest.fixture(scope="module")
def secure_url() -> str:
    return _env(SECURE)


@pytest.fixture(scope="module")
def certs(secure_url: str) -> Path:
    return certs_of(secure_url)


def round_trip(url: str, **options: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, group = f"sec-{tag}", f"g-{tag}"
    with mqkit.connect(url, **options) as broker, broker.consumer(topic, group=group) as consumer:
        with broker.producer() as producer:
            producer.send(topic, {"n": 1})
        message = consumer.receive(timeout=10)
        assert message is not None and message.value == {"n": 1}
        message.ack()


def test_the_restricted_user_sends_and_receives_over_tls(secure_url: str, certs: Path) -> None:
    round_trip(secure_url)
    # mutual TLS: the broker checks a client certificate when one is given (wantClientAuth)
    round_trip(secure_url, cert_file=str(certs / "client.pem"), key_file=str(certs / "client.key"))


def test_credentials_from_the_environment(secure_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = urlsplit(secure_url)
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
    assert "plaintext port" in text and f":{plain.port}" in text


def test_plaintext_to_the_tls_port(secure_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = variant(secure_url, scheme="stomp", drop=("ca_file",))
    text = fails(BrokerUnavailable, url, caplog, (password_of(secure_url),))
    assert "expect TLS" in text


def test_tls_options_without_tls_are_a_config_error(certs: Path) -> None:
    with pytest.raises(ConfigError, match=r"ca_file.*need TLS"):
        mqkit.connect(_env(PLAIN), ca_file=str(certs / "ca.pem"))


def test_a_wrong_password(secure_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = variant(secure_url, password="not-the-password-4711")
    text = fails(
        AuthenticationError, url, caplog, ("not-the-password-4711", password_of(secure_url))
    )
    assert "refused the login" in text and "password" in text


def test_an_unknown_user_and_no_login_at_all(
    secure_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = variant(secure_url, user="nobody-here")
    assert "refused the login" in fails(
        AuthenticationError, url, caplog, (password_of(secure_url),)
    )
    parts = urlsplit(secure_url)
    anonymous = urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", *parts[2:]))
    assert "refused the login" in fails(AuthenticationError, anonymous, caplog, ())


def test_a_user_without_permission_on_the_topic(caplog: pytest.LogCaptureFixture) -> None:
    url = _env(DENIED)
    secret = password_of(url)
    caplog.set_level(logging.DEBUG)
    tag = uuid.uuid4().hex[:8]
    with mqkit.connect(url) as broker:  # logging in works
        started = time.monotonic()
        with pytest.raises(PermissionDenied) as consuming:
            broker.consumer(f"sec-{tag}", group=f"g-{tag}")
        with pytest.raises(PermissionDenied) as sending, broker.producer() as producer:
            producer.send(f"sec-{tag}", {"n": 1})
            producer.flush(5)
        assert time.monotonic() - started < 2 * LIMIT
    for error in (consuming.value, sending.value):
        assert "not authorized" in str(error) and "authorization map" in str(error)
        assert f"sec-{tag}" in str(error)
        assert secret not in str(error)
    assert secret not in caplog.text


def test_a_destination_outside_the_users_map(
    secure_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """mqkit-app may use mqkit's own destinations, not any other queue of the broker (an existing
    queue read with ``destination=``)."""
    caplog.set_level(logging.DEBUG)
    private = f"/queue/private.{uuid.uuid4().hex[:8]}"
    with (
        mqkit.connect(secure_url) as broker,
        pytest.raises(PermissionDenied, match="not authorized to read"),
    ):
        broker.consumer("t", group="g", destination=private)
    assert password_of(secure_url) not in caplog.text
