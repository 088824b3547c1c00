"""Fan-out at scale against the embedded store (real store, real sockets): every
transaction serialised once for all clients, a client that stops reading disconnected on its
own (close 1013) and resumable, and a thousand clients receiving identical streams."""

from __future__ import annotations

import json
import resource
import socket
import struct
import subprocess
import sys
import threading
import uuid

import pytest

from electric import metrics
from electric.changes import NewRecord, Transaction, utc_now
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.satellite.lsn import decode_offset
from tests.support.waiting import wait_until

from .sat_harness import TABLE, SatClient, ServerThread

SLOW_LIMIT = 1024 * 1024


def _encoded() -> float:
    return metrics.REGISTRY.get_sample_value(
        "electric_transactions_encoded_total", {"protocol": "satellite"}) or 0.0


def _store_server(tmp_path, **server_kwargs) -> ServerThread:
    def setup(t: ServerThread) -> None:
        from electric.app import _satellite_stream
        from electric.store.service import LocalStore

        t.store = LocalStore(str(tmp_path / "store"), lambda relation: ["id"])
        t.open_stream = lambda start: _satellite_stream(t.store, start)

    def teardown(t: ServerThread) -> None:
        t.store.close()

    return ServerThread(str(tmp_path / "offsets.dat"), setup=setup, teardown=teardown,
                        server_kwargs=server_kwargs).start()


def _write(server: ServerThread, content: str) -> int:
    tx = Transaction([NewRecord(TABLE.relation, {"id": str(uuid.uuid4()), "content": content,
                                                 "content_b": None})], utc_now())
    return server.call(lambda: server.store.write(tx))


@pytest.fixture
def big_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _streaming_client(server: ServerThread, client_id: str, lsn: bytes = b"eof") -> SatClient:
    c = SatClient(server.url)
    c.auth(client_id)
    c.send(pb.SatInStartReplicationReq(lsn=lsn))
    c.recv_until(pb.SatInStartReplicationResp)
    return c


class _StuckClient:
    """A raw websocket client that starts streaming and then stops reading (tiny receive
    buffer, so the server's queue for it fills)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"Sec-WebSocket-Version: 13\r\n\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        self.buf = self.buf.split(b"\r\n\r\n", 1)[1]
        for msg in (pb.SatAuthReq(id="stuck", token="u"), pb.SatInStartReplicationReq(lsn=b"eof")):
            data = frames.encode(msg)
            self.sock.sendall(bytes([0x82, 0x80 | len(data)]) + b"\0\0\0\0" + data)

    def read_all(self, timeout: float = 30.0) -> tuple[list[bytes], int | None]:
        """Everything up to the close frame (or EOF): binary payloads and the close code."""
        self.sock.settimeout(timeout)
        payloads: list[bytes] = []
        while True:
            frame = self._frame()
            if frame is None:
                return payloads, None
            opcode, data = frame
            if opcode == 8:
                return payloads, int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            if opcode == 2:
                payloads.append(data)

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def _frame(self) -> tuple[int, bytes] | None:
        if not self._need(2):
            return None
        n, at = self.buf[1] & 0x7F, 2
        if n == 126:
            if not self._need(4):
                return None
            n, at = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            if not self._need(10):
                return None
            n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
        if not self._need(at + n):
            return None  # cut mid-frame: that frame never counts
        opcode, data, self.buf = self.buf[0] & 0x0F, self.buf[at:at + n], self.buf[at + n:]
        return opcode, data


def _content(msg: pb.SatOpLog) -> str:
    op = msg.ops[1]
    return getattr(op, op.WhichOneof("op")).row_data[1].decode()


def _oplog_contents(payloads: list[bytes]) -> list[tuple[bytes, str]]:
    out = []
    for data in payloads:
        msg = frames.decode(data)
        if isinstance(msg, pb.SatOpLog):
            lsn = msg.ops[0].begin.lsn
            out.append((lsn, _content(msg)))
    return out


def test_a_client_that_stops_reading_is_cut_off_alone_and_resumes(tmp_path):
    server = _store_server(tmp_path, slow_client_bytes=SLOW_LIMIT, close_grace=60.0)
    try:
        reader = _streaming_client(server, "reader")
        stuck = _StuckClient(server.port)
        wait_until(lambda: len(server.server._clients) == 2 and all(
            c.session.out.active for c in server.server._connections), what="both streaming")
        big = "x" * 60_000  # 150 such transactions: more than the kernel buffers hold
        written = [f"{i}:" + big for i in range(150)]
        got: list[str] = []

        def read() -> None:
            while len(got) < len(written):
                msg, _ = reader.recv_until(pb.SatOpLog, timeout=60)
                got.append(_content(msg))

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        for content in written:
            _write(server, content)
        # The reader gets everything while the stuck client does not read a byte.
        reading.join(60)
        assert got == written
        wait_until(lambda: server.status()["slow_disconnects"] == 1, what="stuck client cut")
        assert metrics.REGISTRY.get_sample_value("electric_satellite_slow_disconnects_total") >= 1
        payloads, code = stuck.read_all()
        assert code == 1013
        stuck.sock.close()
        wait_until(lambda: "stuck" not in server.server._clients, what="stuck client gone")
        received = _oplog_contents(payloads)
        assert 0 < len(received) < len(written)
        assert [c for _, c in received] == written[:len(received)]
        # It reconnects with the lsn of the last transaction it got and receives the rest.
        again = _streaming_client(server, "stuck", lsn=received[-1][0])
        rest = []
        while len(received) + len(rest) < len(written):
            msg, _ = again.recv_until(pb.SatOpLog, timeout=30)
            rest.append(_content(msg))
        assert [c for _, c in received] + rest == written
        decode_offset(received[-1][0])  # a real resumable lsn
        again.close()
        reader.close()
    finally:
        server.stop()


def test_a_thousand_clients_receive_identical_streams_encoded_once(tmp_path, big_fd_limit):
    clients, transactions = 1000, 20
    server = _store_server(tmp_path)
    load = subprocess.Popen(
        [sys.executable, "-m", "tests.support.satellite_clients", str(server.port),
         str(clients), str(transactions)], stdout=subprocess.PIPE, text=True)
    try:
        assert load.stdout.readline().split() == ["READY", str(clients)]
        before = _encoded()
        for i in range(transactions):
            _write(server, f"row {i}")
        result = json.loads(load.stdout.readline())
        assert result["failures"] == []
        assert result["oplogs"] == [transactions, transactions]
        assert list(result["streams"].values()) == [clients]  # one stream, byte for byte
        assert _encoded() - before == transactions
    finally:
        load.kill()
        load.wait()
        server.stop()
