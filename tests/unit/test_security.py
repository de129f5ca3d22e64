"""mqkit.security against real TLS handshakes on loopback (certificates: scripts/lib/certs.sh)."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

import mqkit
from mqkit.config import parse_url
from mqkit.errors import ConfigError, TLSError
from mqkit.security import TLSOptions, client_context, tls_failure, with_credentials

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("certs")
    script = (
        'log() { echo "$*" >&2; }; die() { echo "$*" >&2; exit 1; }; '
        f'. "{ROOT}/scripts/lib/certs.sh"; make_certs "{where}"'
    )
    subprocess.run(["bash", "-c", script], check=True, timeout=120)
    return where


@dataclass(frozen=True)
class Options(TLSOptions):
    pass


def serve_once(handler: object) -> int:
    """A loopback server that runs ``handler(sock)`` on its first connection; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]

    def run() -> None:
        with listener:
            listener.settimeout(10)
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ssl.SSLError):
                handler(conn)  # type: ignore[operator]

    threading.Thread(target=run, daemon=True).start()
    return port


def tls_server(certs: Path, cert: str) -> int:
    """A TLS server on loopback presenting ``cert`` (and its key) once; its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / f"{cert}.pem", certs / f"{cert}.key")

    def handshake(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    return serve_once(handshake)


def plaintext_server() -> int:
    """A server that does not speak TLS: it answers anything with a protocol banner, as an
    AMQP or STOMP port does, and hangs up."""

    def banner(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"AMQP\x00\x00\x09\x01")

    return serve_once(banner)


def handshake_error(port: int, options: Options, host: str = "localhost") -> TLSError:
    context = client_context(options, "test://")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLError) as caught,
    ):
        context.wrap_socket(raw, server_hostname=host)
    found = tls_failure(caught.value, "test://")
    assert isinstance(found, TLSError)
    return found


def test_a_trusted_server_passes(certs: Path) -> None:
    port = tls_server(certs, "server")
    context = client_context(Options(ca_file=str(certs / "ca.pem")), "test://")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() is not None
        tls.sendall(b"x")


def test_an_unknown_ca_is_named(certs: Path) -> None:
    error = handshake_error(
        tls_server(certs, "server"), Options(ca_file=str(certs / "other-ca.pem"))
    )
    assert "CA that is not trusted" in str(error) and "ca_file=" in str(error)


def test_the_system_cas_do_not_trust_a_private_ca(certs: Path) -> None:
    error = handshake_error(tls_server(certs, "server"), Options())
    assert "not trusted" in str(error)


def test_a_wrong_host_is_named(certs: Path) -> None:
    error = handshake_error(tls_server(certs, "wronghost"), Options(ca_file=str(certs / "ca.pem")))
    assert "does not name the host" in str(error)


def test_an_expired_certificate_is_named(certs: Path) -> None:
    error = handshake_error(tls_server(certs, "expired"), Options(ca_file=str(certs / "ca.pem")))
    assert "expired" in str(error)


def test_tls_to_a_plaintext_port_is_named(certs: Path) -> None:
    error = handshake_error(plaintext_server(), Options(ca_file=str(certs / "ca.pem")))
    assert "does not speak TLS" in str(error)


def test_skipping_verification_is_explicit_and_loud(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = tls_server(certs, "wronghost")
    with caplog.at_level(logging.WARNING, logger="mqkit.security"):
        context = client_context(Options(tls_insecure_skip_verify=True), "test://")
    assert "NOT checked" in caplog.text
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"x")


def test_defaults_verify_the_certificate_and_the_host() -> None:
    context = client_context(Options(), "test://")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_missing_tls_files_are_config_errors(tmp_path: Path, certs: Path) -> None:
    with pytest.raises(ConfigError, match=r"ca_file=.*no such file"):
        client_context(Options(ca_file=str(tmp_path / "nope.pem")), "test://")
    with pytest.raises(ConfigError, match="key_file needs cert_file"):
        client_context(Options(key_file=str(certs / "client.key")), "test://")
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        client_context(Options(cert_file=str(certs / "ca.pem")), "test://")  # no key in it


def test_a_client_certificate_is_loaded(certs: Path) -> None:
    options = Options(cert_file=str(certs / "client.pem"), key_file=str(certs / "client.key"))
    assert isinstance(client_context(options, "test://"), ssl.SSLContext)


def test_other_errors_are_not_tls_failures() -> None:
    assert tls_failure(ConnectionRefusedError("refused"), "test://") is None
    try:
        try:
            raise ssl.SSLError(1, "bad")
        except ssl.SSLError as inner:
            raise OSError("wrapped") from inner
    except OSError as outer:
        assert isinstance(tls_failure(outer, "test://"), TLSError)


# -- credentials -----------------------------------------------------------------------------------


def test_the_urls_own_credentials_win(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    url, options = with_credentials(
        parse_url("amqp://u:p@h/"),
        {"password_file": str(secret), "x": "1"},
        {"MQKIT_USERNAME": "env", "MQKIT_PASSWORD": "env-pw"},
    )
    assert (url.username, url.password) == ("u", "p") and options == {"x": "1"}


def test_a_password_file_fills_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret:@/\n")
    url, options = with_credentials(
        parse_url(f"amqp://u@h/?password_file={secret}"),
        {"password_file": str(secret)},
        {},
    )
    assert (url.username, url.password) == ("u", "s3cret:@/") and options == {}
    assert "s3cret" not in url.redacted()


def test_env_variables_fill_missing_credentials() -> None:
    url, _ = with_credentials(
        parse_url("kafka://h:9092"), {}, {"MQKIT_USERNAME": "app", "MQKIT_PASSWORD": "pw"}
    )
    assert (url.username, url.password) == ("app", "pw")
    url, _ = with_credentials(parse_url("kafka://h:9092"), {}, {})
    assert (url.username, url.password) == (None, None)


def test_an_unreadable_password_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"password_file=.*cannot be read"):
        with_credentials(parse_url("amqp://u@h/"), {"password_file": str(tmp_path / "no")}, {})


def test_connect_reads_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    with mqkit.connect("memory://", password_file=str(secret)) as broker:
        assert broker.url.password == "hunter2"  # consumed by the core, not an unknown option
        assert "hunter2" not in repr(broker)
