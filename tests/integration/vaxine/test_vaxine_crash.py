"""kill -9 the standalone embedded Vaxine during a stream of commits, restart on the same data;
and its first start on a data directory of the first release."""

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import gevent
import pytest
from gevent import socket

from electric.changes import NewRecord, Transaction
from electric.vaxine import rows
from electric.vaxine.antidote import VaxineError
from electric.vaxine.pool import VaxinePool
from electric.vaxine.stream import WalStream
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[3]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_standalone(data_dir, api, repl):
    proc = subprocess.Popen(
        [sys.executable, "-m", "electric.vaxine.embedded", "--data-dir", data_dir,
         "--api-port", str(api), "--replication-port", str(repl)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def listening():
        assert proc.poll() is None, proc.stderr.read().decode()
        socket.create_connection(("127.0.0.1", api), timeout=0.2).close()
        socket.create_connection(("127.0.0.1", repl), timeout=0.2).close()
        return True

    try:
        wait_until(listening, 20, "the standalone embedded Vaxine listening", ignore=(OSError,))
    except AssertionError:
        proc.kill()
        raise
    return proc


def pk(_rel):
    return ["id"]


ROWS_PER_TXN = 5


def read_all(port, start, expect_at_least):
    """``(transaction id, offset)`` of everything streamed; every transaction must be whole."""
    stream = WalStream("127.0.0.1", port, start)
    out = []
    try:
        while True:
            try:
                tx, off = stream.get(timeout=0.5 if len(out) >= expect_at_least else 10)
            except gevent.queue.Empty:
                return out
            ids = sorted(c.record["id"] for c in tx.changes)
            tid = ids[0].rsplit(".", 1)[0]
            assert ids == [f"{tid}.{k}" for k in range(len(ids))], "a half transaction"
            assert len(ids) in (1, ROWS_PER_TXN)
            out.append((tid, off))
    finally:
        stream.close()


def test_kill_9_during_commits_loses_no_acknowledged_commit(tmp_path):
    data = str(tmp_path / "vx")
    api, repl = free_port(), free_port()
    proc = start_standalone(data, api, repl)
    acked: list[str] = []
    pool = VaxinePool("127.0.0.1", api, size=4, connect_timeout_ms=500)

    def writer(w):
        i = 0
        while True:
            rid = f"{w}-{i}"
            t = Transaction([NewRecord(("public", "t"), {"id": f"{rid}.{k}", "v": "x" * 50})
                             for k in range(ROWS_PER_TXN)], datetime.now(UTC))
            try:
                rows.write_transaction(pool, t, pk)
            except VaxineError:
                return  # the server is gone
            acked.append(rid)
            i += 1

    live = WalStream("127.0.0.1", repl, 0, min_backoff_s=0.05, max_backoff_s=0.2)
    writers = [gevent.spawn(writer, w) for w in range(4)]
    try:
        wait_until(lambda: len(acked) > 20, 20, "commits acknowledged before the kill",
                   step=0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gevent.joinall(writers, timeout=10)
        assert len(acked) > 20
        seen_live = {}
        while True:
            try:
                tx, off = live.get(timeout=0.3)
            except gevent.queue.Empty:
                break
            seen_live[tx.changes[0].record["id"].rsplit(".", 1)[0]] = off

        proc = start_standalone(data, api, repl)
        after = read_all(repl, 0, len(acked))
        ids = [rid for rid, _ in after]
        assert len(ids) == len(set(ids)), "a transaction appears twice"
        assert set(acked) <= set(ids), "an acknowledged commit was lost"
        offsets = dict(after)
        for rid, off in seen_live.items():
            assert offsets[rid] == off, "offsets changed across the crash"
        ordered = [off for _, off in after]
        assert ordered == sorted(ordered)
        for k in (0, len(after) // 2, len(after) - 1):
            resumed = read_all(repl, after[k][1], len(after) - k - 1)
            assert resumed == after[k + 1:]
        # and the restarted server still takes writes, streamed after everything else
        pool.close()
        pool = VaxinePool("127.0.0.1", api, size=1)
        rows.write_transaction(pool, Transaction([NewRecord(("public", "t"), {"id": "new.0"})],
                                                 datetime.now(UTC)), pk)
        (rid, off), = read_all(repl, after[-1][1], 1)
        assert rid == "new" and off > after[-1][1]
    finally:
        live.close()
        pool.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for g in writers:
            g.kill()


FIRST_RELEASE = REPO / "tests" / "fixtures" / "vaxine" / "first_release"


@pytest.mark.parametrize("garbage", [b"", b"\x00\x00\x00\x09partial", os.urandom(3000)])
def test_first_release_data_dir_is_imported_at_first_start(tmp_path, garbage):
    """A vaxine.log of the first release (the same four transactions written by that
    release's server, tests/fixtures/vaxine/first_release; with a torn last write after
    them, or not) is imported at first start: the stream sends byte for byte the frames that
    release sent, at the same offsets, and new commits continue after them."""
    import json

    from electric.vaxine.embedded.server import EmbeddedVaxine

    data = tmp_path / "vx"
    data.mkdir()
    (data / "vaxine.log").write_bytes((FIRST_RELEASE / "vaxine.log").read_bytes() + garbage)
    recorded = [bytes.fromhex(h) for h in
                json.loads((FIRST_RELEASE / "stream.json").read_text())["frames_from_0"]]
    server = EmbeddedVaxine(str(data), api_port=0, replication_port=0).start()
    try:
        assert (data / "vaxine.log.imported").exists() and not (data / "vaxine.log").exists()
        assert raw_frames(server.replication_port, len(recorded)) == recorded
        pool = VaxinePool("127.0.0.1", server.api_port, size=1)
        rows.write_transaction(pool, Transaction([NewRecord(("public", "t"), {"id": "b.0"})],
                                                 datetime.now(UTC)), pk)
        pool.close()
        stream = WalStream("127.0.0.1", server.replication_port, 0)
        try:
            streamed = [stream.get(timeout=10) for _ in range(5)]
        finally:
            stream.close()
        tx, offset = streamed[-1]
        assert [c.record["id"] for c in tx.changes] == ["b.0"]
        # where the first release would have written its next record: the end of its file
        assert offset[1] == (FIRST_RELEASE / "vaxine.log").stat().st_size
    finally:
        server.stop()
    # a second start opens the imported store as it is
    server = EmbeddedVaxine(str(data), api_port=0, replication_port=0).start()
    try:
        assert raw_frames(server.replication_port, len(recorded)) == recorded
    finally:
        server.stop()


def raw_frames(port, count):
    """The first ``count`` vx_wal_txn frames streamed from offset 0, as sent."""
    import struct

    from electric.vaxine import etf

    sock = socket.create_connection(("127.0.0.1", port))
    try:
        req = etf.encode((etf.Atom("vx_cli_req"),
                          etf.Reference(etf.Atom("nonode@nohost"), 0, (1, 2, 3)),
                          (etf.Atom("vx_cli_start_req"), [(etf.Atom("offset"), 0)])))
        sock.sendall(struct.pack(">I", len(req)) + req)
        out = []
        for _ in range(count + 1):
            n = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))[0]
            out.append(sock.recv(n, socket.MSG_WAITALL))
        return out[1:]  # after the start reply
    finally:
        sock.close()


def test_backup_store_copies_a_running_standalone_server(tmp_path):
    """``electric backup-store`` on the data directory of ``electric vaxine`` copies its
    vaxine.db while it runs; the copy, put in place of a new data directory, serves the same
    log at the same offsets."""
    from electric.vaxine.embedded.server import EmbeddedVaxine

    data = tmp_path / "vx"
    server = EmbeddedVaxine(str(data), api_port=0, replication_port=0).start()
    try:
        pool = VaxinePool("127.0.0.1", server.api_port, size=1)
        for i in range(3):
            rows.write_transaction(pool, Transaction(
                [NewRecord(("public", "t"), {"id": f"{i}.{k}"}) for k in range(ROWS_PER_TXN)],
                datetime.now(UTC)), pk)
        pool.close()
        before = read_all(server.replication_port, 0, 3)
        dest = tmp_path / "copy.db"
        done = subprocess.run([sys.executable, "-m", "electric.cli", "backup-store",
                               "--vaxine-data-dir", str(data), str(dest)],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "vaxine.db" in done.stdout
    finally:
        server.stop()
    restored = tmp_path / "restored"
    restored.mkdir()
    os.replace(dest, restored / "vaxine.db")
    server = EmbeddedVaxine(str(restored), api_port=0, replication_port=0).start()
    try:
        assert read_all(server.replication_port, 0, 3) == before
    finally:
        server.stop()
