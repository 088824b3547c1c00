"""Memory held for half-sent large messages, across connections.

Each listener caps a single message (websocket 16 MiB, Vaxine API 64 MiB, Vaxine replication
1 MiB, Postgres 1 MiB), and rejects a larger announced length before reading it. But a peer
may announce a length under the cap and send most of it slowly: the bytes received so far are
held until the message completes. The websocket listener reserves announced payloads against
a process-wide budget (electric/limits.py), and so does the standalone store's Vaxine API
port (``electric vaxine``; Electric's embedded store is in process and has no such port).
This measures it: SOCKETS connections each send CHUNK_MB of a message and stall.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.chaos.harness import StandaloneVaxine, rss_kb
from tests.chaos.listeners import WS_HANDSHAKE, startup_packet, ws_frame
from tests.support.electric import ElectricProcess

pytestmark = pytest.mark.chaos

SOCKETS = 10
CHUNK_MB = 12  # 10 x 12 = 120 MiB if nothing bounded the total
# Each listener's process-wide budget for incomplete messages, plus slack for the process.
LIMIT_MB = {"websocket": 32 + 16, "vaxine_api": 65 + 16, "postgres": 16}


def _ws_prefix() -> bytes:
    return WS_HANDSHAKE + ws_frame(2, b"\x05", length=(15 << 20))[:14]


def _vaxine_api_prefix() -> bytes:
    return struct.pack(">I", 60 << 20) + b"\x7b"


def _pg_prefix() -> bytes:
    return startup_packet({"user": "u", "replication": "database", "application_name": "x"}) \
        + b"Q" + struct.pack(">I", 1 << 20)


CASES = {
    "websocket": ("WEBSOCKET_PORT", _ws_prefix),
    "vaxine_api": ("VAXINE_API_PORT", _vaxine_api_prefix),
    "postgres": ("POSTGRES_REPLICATION_PORT", _pg_prefix),
}


@pytest.fixture(scope="module")
def electric(tmp_path_factory):
    e = ElectricProcess(str(tmp_path_factory.mktemp("partial") / "electric"),
                        env={"LOG_LEVEL": "info"})
    e.start()
    yield e
    e.kill()


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    v = StandaloneVaxine(str(tmp_path_factory.mktemp("partial_vx") / "data")).start()
    yield v
    v.kill()


@pytest.mark.parametrize("name", list(CASES))
def test_stalled_partial_messages_are_bounded(electric, standalone, name):
    setting, prefix = CASES[name]
    if setting.startswith("VAXINE_"):
        port, process = int(standalone.env()[setting]), standalone.proc
    else:
        port, process = int(electric.env[setting]), electric.proc
    pid = process.pid
    before = rss_kb(pid)
    socks = []
    chunk = b"\x00" * (1 << 20)
    try:
        for _ in range(SOCKETS):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            try:
                s.sendall(prefix())
                for _ in range(CHUNK_MB):
                    s.sendall(chunk)
            except OSError:
                pass  # cut off: that is a bound too
        time.sleep(1.0)
        grown = (rss_kb(pid) - before) // 1024
    finally:
        for s in socks:
            s.close()
    print(f"\n{name}: {SOCKETS} stalled peers x {CHUNK_MB} MiB -> RSS +{grown} MiB")
    assert process.poll() is None
    assert grown < LIMIT_MB[name], f"{name}: RSS grew {grown} MiB for {SOCKETS} stalled peers"
