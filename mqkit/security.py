"""TLS and credentials, the same on every backend.

Every adapter's options inherit :class:`TLSOptions`, so a CA, a client certificate or the
(loudly named) switch that turns verification off are spelled one way for all brokers, and
:func:`client_context` builds the one :class:`ssl.SSLContext` each client library is given.
:func:`with_credentials` fills the URL's user and password from a file or the environment
before an adapter sees it, so no secret has to be written into a URL. :func:`tls_failure`
turns the ``ssl`` module's exceptions into a :class:`~mqkit.errors.TLSError` that says what
is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mqkit.adapter import Settings, option
from mqkit.config import BrokerURL
from mqkit.errors import ConfigError, TLSError

log = logging.getLogger("mqkit.security")

#: Env variables read when neither the URL nor ``password_file=`` gives the credentials.
USERNAME_ENV = "MQKIT_USERNAME"
PASSWORD_ENV = "MQKIT_PASSWORD"
#: The option naming a file that holds the password (read by the core, never by an adapter).
PASSWORD_FILE = "password_file"


@dataclass(frozen=True)
class TLSOptions(Settings):
    """The TLS options of every adapter (inherit it: ``class Settings(TLSOptions)``)."""

    tls: bool = option(
        False, "Connect with TLS (implied by the TLS schemes: amqps://, stomp+ssl://)."
    )
    ca_file: str = option(
        "", "PEM file of the CA(s) to trust instead of the system's (a private CA)."
    )
    cert_file: str = option(
        "", "PEM client certificate, for brokers that ask for one (mutual TLS)."
    )
    key_file: str = option("", "PEM private key of cert_file (default: cert_file holds it too).")
    tls_insecure_skip_verify: bool = option(
        False,
        "DANGEROUS: accept any server certificate and host name (no protection against a "
        "man in the middle); for a throw-away test broker only. Logged as a warning.",
    )

    def tls_options_given(self) -> bool:
        """Whether any TLS file or switch is set (an error where TLS is off)."""
        return bool(
            self.ca_file or self.cert_file or self.key_file or self.tls_insecure_skip_verify
        )


def client_context(settings: TLSOptions, where: str) -> ssl.SSLContext:
    """The client TLS context for ``settings``: system or ``ca_file`` CAs, the client certificate
    when given, certificate and host-name verification unless explicitly turned off."""
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{where}: option {name}={path!r}: no such file")
    if settings.key_file and not settings.cert_file:
        raise ConfigError(f"{where}: option key_file needs cert_file (the client certificate)")
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file or None)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"{where}: cannot load the TLS files (ca_file={settings.ca_file!r}, "
            f"cert_file={settings.cert_file!r}, key_file={settings.key_file!r}): {exc}"
        ) from None
    if settings.tls_insecure_skip_verify:
        log.warning(
            "%s: tls_insecure_skip_verify is on: the server's certificate and host name are "
            "NOT checked; anyone on the path can read and change the traffic",
            where,
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


#: OpenSSL verification codes worth a sentence of their own.
_VERIFY_CAUSES = {
    10: "the server's certificate has expired (or the clock is wrong)",
    9: "the server's certificate is not valid yet (or the clock is wrong)",
    18: "the server's certificate is self-signed and not trusted; give its CA with ca_file=",
    19: "the server's certificate chain ends in a CA that is not trusted; give it with ca_file=",
    20: "the server's certificate is signed by a CA that is not trusted; give it with ca_file=",
    21: "the server's certificate is signed by a CA that is not trusted; give it with ca_file=",
    62: "the server's certificate does not name the host connected to; connect by a name it holds",
    64: "the server's certificate does not name the IP address connected to; connect by a "
    "name or address it holds",
}


def tls_failure(exc: BaseException, where: str) -> TLSError | None:
    """A :class:`TLSError` naming what went wrong in ``exc`` and what to do, or ``None`` when
    ``exc`` (or what it was raised from) is not a TLS problem."""
    found = _ssl_cause(exc)
    if found is None:
        return None
    if isinstance(found, ssl.SSLCertVerificationError):
        cause = _VERIFY_CAUSES.get(found.verify_code) or (
            f"the server's certificate was refused: {found.verify_message}"
        )
        return TLSError(f"{where}: TLS handshake failed: {cause}")
    reason = (getattr(found, "reason", None) or "").upper()
    if reason in {
        "WRONG_VERSION_NUMBER",
        "PACKET_LENGTH_TOO_LONG",
        "HTTP_REQUEST",
        "RECORD_LAYER_FAILURE",
        "UNKNOWN_PROTOCOL",
    }:
        return TLSError(
            f"{where}: TLS handshake failed: the port does not speak TLS (a plaintext port?); "
            "use the broker's TLS port or a plaintext URL"
        )
    if "CERTIFICATE" in reason or "ALERT" in reason:
        return TLSError(
            f"{where}: TLS handshake failed: the broker refused the client ({reason.lower()}); "
            "it may require a client certificate (cert_file=, key_file=) signed by a CA it trusts"
        )
    return TLSError(f"{where}: TLS failed: {found}")


def _ssl_cause(exc: BaseException | None) -> ssl.SSLError | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def with_credentials(
    url: BrokerURL, options: Mapping[str, Any], environ: Mapping[str, str] = os.environ
) -> tuple[BrokerURL, dict[str, Any]]:
    """``url`` with its user and password filled in, and ``options`` without ``password_file``.

    The URL's own credentials win; else the password is read from ``password_file=`` (the file's
    text without its trailing newline); else ``MQKIT_USERNAME`` / ``MQKIT_PASSWORD`` are used.
    """
    rest = dict(options)
    path = rest.pop(PASSWORD_FILE, None)
    username, password = url.username, url.password
    if path:
        try:
            text = Path(str(path)).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{url.redacted()}: option {PASSWORD_FILE}={path!r} cannot be read "
                f"({exc.strerror or exc})"
            ) from None
        if password is None:
            password = text.rstrip("\r\n")
    if username is None:
        username = environ.get(USERNAME_ENV) or None
    if password is None and username is not None:
        password = environ.get(PASSWORD_ENV)
    if (username, password) == (url.username, url.password):
        return url, rest
    return dataclasses.replace(url, username=username, password=password), rest
