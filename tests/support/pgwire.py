"""A tiny Postgres frontend over a raw socket, for poking Electric's publisher in tests."""

from __future__ import annotations

import struct

from gevent import socket  # cooperative when the server under test runs in-process


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


class RawClient:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

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
