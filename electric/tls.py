"""TLS for Electric's listeners: one server context from ``TLS_CERT_FILE`` + ``TLS_KEY_FILE``.

The same certificate serves the replication port (after a Postgres ``SSLRequest``), the
websocket port (``wss://``) and the status port (``https://``). The files are checked at
start-up, each on its own, so a bad one stops Electric with one line naming *its* setting
rather than OpenSSL's generic complaint about the pair.

Contexts come from :mod:`gevent.ssl`, so handshakes and reads are cooperative whether or not
the process is monkey-patched (tests run servers in-process without patching).
"""

from __future__ import annotations

import ipaddress
import ssl as stdlib_ssl

from gevent import ssl

__all__ = ["TlsConfigError", "server_context", "is_loopback"]


class TlsConfigError(Exception):
    """A TLS file is missing or unusable; ``setting`` names it, ``problem`` says why."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def _read(setting: str, path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as exc:
        raise TlsConfigError(setting, f"cannot read {path}: {exc.strerror or exc}") from None


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context; raises :class:`TlsConfigError` naming the bad setting."""
    cert_pem = _read("TLS_CERT_FILE", cert_file)
    key_pem = _read("TLS_KEY_FILE", key_file)
    if "-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise TlsConfigError("TLS_CERT_FILE", f"{cert_file} holds no PEM certificate")
    try:
        first = cert_pem[cert_pem.index("-----BEGIN CERTIFICATE-----"):]
        end = first.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
        stdlib_ssl.PEM_cert_to_DER_cert(first[:end])
    except ValueError:
        raise TlsConfigError("TLS_CERT_FILE", f"{cert_file}: malformed PEM certificate") \
            from None
    if "PRIVATE KEY-----" not in key_pem:
        raise TlsConfigError("TLS_KEY_FILE", f"{key_file} holds no PEM private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except stdlib_ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(reason).upper():
            raise TlsConfigError("TLS_KEY_FILE", f"{key_file} does not match TLS_CERT_FILE") \
                from None
        if "PEM" in str(reason).upper() and "CERT" not in str(reason).upper():
            raise TlsConfigError("TLS_KEY_FILE", f"{key_file}: unusable private key ({reason})") \
                from None
        raise TlsConfigError("TLS_CERT_FILE",
                             f"{cert_file}/{key_file} rejected by OpenSSL ({reason})") from None
    return context


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
