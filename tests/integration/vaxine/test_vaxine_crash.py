"""kill -9 the standalone embedded Vaxine during a stream of commits, restart on the same data."""

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


def read_all(port, start, expect_at_least):
    stream = WalStream("127.0.0.1", port, start)
    out = []
    try:
        while True:
            try:
                tx, off = stream.get(timeout=0.5 if len(out) >= expect_at_least else 10)
            except gevent.queue.Empty:
                return out
            out.append((tx.changes[0].record["id"], off))
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
            t = Transaction([NewRecord(("public", "t"), {"id": rid, "v": "x" * 50})],
                            datetime.now(UTC))
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
            seen_live[tx.changes[0].record["id"]] = off

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
        rows.write_transaction(pool, Transaction([NewRecord(("public", "t"), {"id": "new"})],
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


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00\x09partial", os.urandom(3000)])
def test_garbage_tail_after_crash_is_tolerated(tmp_path, garbage):
    from electric.vaxine.embedded.server import EmbeddedVaxine

    data = tmp_path / "vx"
    server = EmbeddedVaxine(str(data), api_port=0, replication_port=0).start()
    pool = VaxinePool("127.0.0.1", server.api_port, size=1)
    rows.write_transaction(pool, Transaction([NewRecord(("public", "t"), {"id": "a"})],
                                             datetime.now(UTC)), pk)
    pool.close()
    server.stop()
    with open(data / "vaxine.log", "ab") as f:
        f.write(garbage)
    server = EmbeddedVaxine(str(data), api_port=0, replication_port=0).start()
    try:
        assert [rid for rid, _ in read_all(server.replication_port, 0, 1)] == ["a"]
    finally:
        server.stop()
