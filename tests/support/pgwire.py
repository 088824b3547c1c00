"""A tiny Postgres frontend over a raw socket, for poking Electric's publisher in tests.

``RawClient(port, tls=context)`` asks for TLS first (SSLRequest); :meth:`RawClient.login`
runs the SCRAM-SHA-256 exchange every subscriber must pass (scramp's client side).
"""

from __future__ import annotations

import struct

from gevent import (
    socket,  # cooperative when the server under test runs in-process
    ssl,
)
from scramp import ScramClient

SSL_REQUEST = struct.pack(">II", 8, 80877103)


def startup_packet(params: dict[str, str], version: int = 196608) -> bytes:
    body = struct.pack(">I", version) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack(">I", len(body) + 4) + body


def pg_message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack(">I", len(body) + 4) + body


def error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse body → {field code: value}."""
    fields = {}
    for part in body.rstrip(b"\0").split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return pg_message(b"p", mechanism.encode() + b"\0" + struct.pack(">i", len(data)) + data)


def client_tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """Verifying client context when ``cafile`` is given, else encrypt-only (sslmode=require)."""
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def start_tls(sock, context: ssl.SSLContext, server_hostname: str = "127.0.0.1"):
    """SSLRequest on ``sock``; returns the TLS socket (AssertionError when refused)."""
    sock.sendall(SSL_REQUEST)
    answer = sock.recv(1)
    assert answer == b"S", f"server declined TLS: {answer!r}"
    return context.wrap_socket(sock, server_hostname=server_hostname)


class RawClient:
    def __init__(self, port: int, timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            self.sock = start_tls(self.sock, tls)
        self.buf = b""

    def login(self, password: str, **params: str) -> list[tuple[bytes, bytes]]:
        """Startup + SCRAM-SHA-256 with ``password``; the messages after the exchange up to
        ReadyForQuery or an ErrorResponse (``[(b"E", ...)]`` when refused)."""
        self.startup(**params)
        tag, body = self.read_message() or (b"", b"")
        if tag != b"R" or body[:4] != struct.pack(">i", 10):
            return [(tag, body)]
        # Empty SCRAM user name, like libpq (Postgres takes it from the startup packet).
        client = ScramClient(["SCRAM-SHA-256"], "", password)
        first = client.get_client_first()
        self.send(sasl_initial_response("SCRAM-SHA-256", first.encode()))
        tag, body = self.read_message() or (b"", b"")
        if tag != b"R":
            return [(tag, body)]
        client.set_server_first(body[4:].decode())
        self.send(pg_message(b"p", client.get_client_final().encode()))
        tag, body = self.read_message() or (b"", b"")
        if tag != b"R":
            return [(tag, body)]
        client.set_server_final(body[4:].decode())
        return self.read_until(b"Z")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def startup(self, **params: str) -> None:
        self.send(startup_packet(params))

    def query(self, text: str) -> None:
        self.send(pg_message(b"Q", text.encode() + b"\0"))

    def read_message(self) -> tuple[bytes, bytes] | None:
        """Next backend message (tag, body), or None at EOF."""
        while True:
            if len(self.buf) >= 5:
                (length,) = struct.unpack(">I", self.buf[1:5])
                if len(self.buf) >= 1 + length:
                    tag, body = self.buf[:1], self.buf[5 : 1 + length]
                    self.buf = self.buf[1 + length :]
                    return tag, body
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data

    def read_until(self, tag: bytes) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the first with ``tag`` (fewer at EOF)."""
        out = []
        while (msg := self.read_message()) is not None:
            out.append(msg)
            if msg[0] == tag:
                break
        return out

    def close(self) -> None:
        self.sock.close()
