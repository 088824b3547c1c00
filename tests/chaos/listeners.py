"""Shared pieces of the malformed-input suites (``tests/e2e/test_malformed_*.py``).

One Electric process per suite module, with one real connector (so the publisher admits a
replication connection and the whole pipeline is live), an empty migrations directory (no
fuzzed request can apply anything), and the embedded Vaxine. Each suite throws batches of
bad input at one listener over fresh TCP connections and, after every batch, asks a
:class:`Guard` to check that the process is still up, that its RSS has not grown beyond a
bound, that it logged no traceback or ERROR line since the previous check, and that a
well-formed client is still served on the same listener. Every test does its own batch and
its own check, so each can run alone and in any order.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from electric.devenv import DEV_SCHEMA_SQL, PgCluster
from tests.chaos.harness import rss_kb
from tests.support.electric import ElectricProcess
from tests.support.pgwire import RawClient, pg_message, startup_packet  # noqa: F401 (re-exported)
from tests.support.postgres import drop_database
from tests.support.tls import TestCA

# RSS may grow a little while caches (decoders, greenlet pools) warm up; more than this
# over the warm baseline across a whole suite means something is kept per bad connection.
RSS_GROWTH_LIMIT_KB = 40 * 1024


def poke(port: int, data: bytes | list[bytes], timeout: float = 2.0, read_limit: int = 1 << 16,
         half_close: bool = True, tls: ssl.SSLContext | None = None,
         wrap: Callable[[Any], Any] | None = None) -> bytes:
    """Connect, send ``data`` (chunks), half-close, read what comes back until EOF; bounded.

    ``tls``: handshake first (``wrap(sock)`` does it — e.g. Postgres' SSLRequest dance — or
    plain TLS from the first byte). The server may cut us off mid-send (that is a fine
    answer to garbage): broken pipes and resets are not failures. A server that neither
    answers nor closes within ``timeout`` after our EOF raises AssertionError — that would be
    a stuck connection.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if wrap is not None:
        sock = wrap(sock)
    elif tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    return poke_socket(sock, data, port, timeout, read_limit, half_close)


def poke_socket(sock: Any, data: bytes | list[bytes], port: int, timeout: float = 2.0,
                read_limit: int = 1 << 16, half_close: bool = True) -> bytes:
    """:func:`poke` on an open (perhaps TLS, perhaps authenticated) socket; closes it."""
    chunks = [data] if isinstance(data, bytes | bytearray) else data
    out = bytearray()
    with sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
            if half_close:
                _half_close(sock)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        except OSError as exc:  # ENOTCONN: the server already closed and reset
            if exc.errno != 107:
                raise
        deadline = time.monotonic() + timeout
        while len(out) < read_limit:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                got = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                break
            except TimeoutError:
                raise AssertionError(
                    f"port {port}: no EOF {timeout}s after a bad input"
                    f" {bytes(chunks[0][:60]) if chunks else b''!r}"
                ) from None
            if not got:
                break
            out += got
    return bytes(out)


def _half_close(sock: Any) -> None:
    """TCP FIN on the write side, keeping the read side (and TLS decryption) working.

    ``SSLSocket.shutdown`` drops its TLS state first, after which ``recv`` would return raw
    records; shutting down a duplicate of the descriptor sends the same FIN without that.
    """
    if isinstance(sock, ssl.SSLSocket) or hasattr(sock, "_sslobj"):
        raw = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            raw.shutdown(socket.SHUT_WR)
        finally:
            raw.close()
    else:
        sock.shutdown(socket.SHUT_WR)


@dataclass
class Guard:
    """Liveness, memory and well-formed-client checks around batches of bad input."""

    electric: ElectricProcess
    listener: str
    well_formed: Callable[[], None]
    baseline_kb: int = 0
    peak_kb: int = 0
    cases: int = 0
    batches: int = 0
    samples: list[int] = field(default_factory=list)
    log_checked: int = 0  # lines of the log already checked for problems

    def rss(self) -> int:
        return rss_kb(self.electric.proc.pid)

    def warm(self) -> None:
        self.check_alive()
        self.well_formed()
        self.baseline_kb = self.peak_kb = self.rss()

    def check_alive(self) -> None:
        assert self.electric.proc.poll() is None, (
            f"Electric died during the {self.listener} suite\n{self.electric.log()}")

    def after_batch(self, cases: int) -> None:
        self.cases += cases
        self.batches += 1
        self.check_alive()
        self.well_formed()
        rss = self.rss()
        self.samples.append(rss)
        self.peak_kb = max(self.peak_kb, rss)
        assert rss - self.baseline_kb < RSS_GROWTH_LIMIT_KB, (
            f"{self.listener}: RSS grew from {self.baseline_kb} kB to {rss} kB")
        problems, self.log_checked = log_problems(self.electric, self.log_checked)
        assert not problems, problems[:10]

    def summary(self) -> str:
        return (f"{self.listener}: {self.cases} malformed cases in {self.batches} batches; "
                f"RSS {self.baseline_kb // 1024} MiB -> peak {self.peak_kb // 1024} MiB, "
                f"end {(self.samples[-1] if self.samples else 0) // 1024} MiB")


def log_problems(electric: ElectricProcess, skip: int = 0) -> tuple[list[str], int]:
    """Lines that must never appear because of bad input (tracebacks and ERROR-level lines)
    after the first ``skip`` lines of the log, and the number of lines read in all."""
    with open(electric.log_path, errors="replace") as f:
        lines = f.readlines()
    return [line.rstrip() for line in lines[skip:]
            if "Traceback" in line or "[ERROR]" in line or "[CRITICAL]" in line], len(lines)


def check_fuzzed(guard: Guard, cases: int, examples: int) -> None:
    """After a hypothesis batch: most of its examples really ran (none filtered out or
    skipped), and Electric came through it healthy."""
    assert cases >= examples // 2, f"only {cases} of {examples} examples ran"
    guard.after_batch(cases)


class ElectricUnderTest:
    """Electric with one connector to a throwaway database on ``pg``."""

    def __init__(self, pg: PgCluster, workdir: str, tls: TestCA | None = None,
                 env: dict[str, str] | None = None):
        self.pg = pg
        self.ca = tls
        self.db = f"malformed_{uuid.uuid4().hex[:8]}"
        pg.create_database(self.db)
        pg.psql(DEV_SCHEMA_SQL, database=self.db)
        migrations = f"{workdir}/migrations"
        os.makedirs(migrations, exist_ok=True)
        self.electric = ElectricProcess(f"{workdir}/electric", env={
            "CONNECTORS": f"pg_a={pg.url(self.db)}", "POSTGRES_SLOT": f"slot_{self.db}",
            "MIGRATIONS_DIR": migrations, "LOG_LEVEL": "info",
            **({"TLS_CERT_FILE": tls.cert, "TLS_KEY_FILE": tls.key} if tls else {}),
            **(env or {})})
        self.electric.start(timeout=60)
        e = self.electric
        e.wait_for(lambda: all(e.get_json("/api/status")["connectors"].values()),
                   timeout=60, what="connector ready")

    def port(self, setting: str) -> int:
        return int(self.electric.env[setting])

    def client_tls(self) -> ssl.SSLContext | None:
        """A context verifying Electric's certificate against the test CA (None: plain)."""
        return ssl.create_default_context(cafile=self.ca.ca) if self.ca else None

    def close(self) -> None:
        self.electric.kill()
        try:
            drop_database(self.pg, self.db)
        except Exception:  # noqa: BLE001 - best-effort clean-up
            pass


# -- the well-formed client on the publisher port ------------------------------------------

PgFrontend = RawClient


# -- websocket framing (client side, for raw frames the libraries refuse to send) ---------

WS_HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True,
             length: int | None = None) -> bytes:
    """One websocket frame; ``length`` overrides the announced payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 1 << 16:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n & 0xFFFFFFFFFFFFFFFF)
    if mask:
        key = b"\x11\x22\x33\x44"
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload
