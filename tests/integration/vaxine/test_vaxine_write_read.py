"""Pool + row mapping → embedded Vaxine → WAL stream, including CRDT conflict outcomes."""

from datetime import UTC, datetime

import gevent
import pytest
from gevent import socket

from electric.changes import DeletedRecord, NewRecord, Transaction, UpdatedRecord
from electric.vaxine import rows
from electric.vaxine.embedded.server import EmbeddedVaxine
from electric.vaxine.memo import EncodingMemo
from electric.vaxine.offset import VaxineOffset
from electric.vaxine.pool import VaxinePool
from electric.vaxine.stream import WalStream
from tests.support.waiting import wait_until

REL = ("public", "entries")


def pk(_rel):
    return ["id"]


def tx(*changes, origin="postgres_1"):
    return Transaction(list(changes), datetime.now(UTC), origin=origin, publication="pub")


def insert(i, **cols):
    return NewRecord(REL, {"id": str(i), **cols})


def take(stream, n, timeout=5):
    return [stream.get(timeout=timeout) for _ in range(n)]


def row_of(change):
    return change.old_record if isinstance(change, DeletedRecord) else change.record


def test_write_then_stream_from_zero_resume_and_eof(vaxine, pool):
    for i in range(5):
        assert rows.write_transaction(pool, tx(insert(i, content=f"c{i}", other=None)), pk)
    stream = WalStream("127.0.0.1", vaxine.replication_port, 0)
    got = take(stream, 5)
    stream.close()
    assert [row_of(t.changes[0]) for t, _ in got] == [
        {"id": str(i), "content": f"c{i}", "other": None} for i in range(5)]
    offsets = [o for _, o in got]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5
    assert VaxineOffset.from_bytes(VaxineOffset.of(offsets[1]).to_bytes()) == offsets[1]

    resumed = WalStream("127.0.0.1", vaxine.replication_port, offsets[1])
    assert [o for _, o in take(resumed, 3)] == offsets[2:]
    with pytest.raises(gevent.queue.Empty):
        resumed.get(timeout=0.2)

    live = WalStream("127.0.0.1", vaxine.replication_port, "eof")
    wait_until(lambda: live.connected, 5, "the live stream started at the end of the log")
    rows.write_transaction(pool, tx(insert(9, content="live")), pk)
    (t, o), = take(live, 1)
    assert row_of(t.changes[0])["content"] == "live" and o > offsets[-1]
    assert take(resumed, 1)[0][1] == o  # the resumed stream tails live too
    live.close()
    resumed.close()


def test_update_wins_over_concurrent_delete_and_columns_merge(vaxine, pool):
    rows.write_transaction(pool, tx(insert(1, a="a0", b="b0")), pk)
    ops_update = rows.transaction_ops(tx(UpdatedRecord(REL, {"id": "1", "a": "A"})), pk)
    ops_update_b = rows.transaction_ops(tx(UpdatedRecord(REL, {"id": "1", "b": "B"})), pk)
    ops_delete = rows.transaction_ops(tx(DeletedRecord(REL, {"id": "1", "a": "a0", "b": "b0"})),
                                      pk)
    # three interactive transactions, all started before any commits: truly concurrent
    with pool.transaction() as t1, pool.transaction() as t2, pool.transaction() as t3:
        t1.update(ops_update)
        t2.update(ops_delete)
        t3.update(ops_update_b)
        t2.commit()
        t1.commit()
        t3.commit()
    stream = WalStream("127.0.0.1", vaxine.replication_port, 0)
    *_, (last, _o) = take(stream, 4)
    stream.close()
    change = last.changes[0]
    assert isinstance(change, UpdatedRecord)
    assert change.record == {"id": "1", "a": "A", "b": "B"}


def test_insert_wins_over_concurrent_delete_and_sequential_delete_deletes(vaxine, pool):
    rows.write_transaction(pool, tx(insert(2, a="x")), pk)
    with pool.transaction() as t1, pool.transaction() as t2:
        t1.update(rows.transaction_ops(tx(DeletedRecord(REL, {"id": "2", "a": "x"})), pk))
        t2.update(rows.transaction_ops(tx(insert(2, a="again")), pk))
        t1.commit()
        t2.commit()
    rows.write_transaction(pool, tx(insert(3, a="y")), pk)
    rows.write_transaction(pool, tx(DeletedRecord(REL, {"id": "3", "a": "y"})), pk)
    stream = WalStream("127.0.0.1", vaxine.replication_port, 0)
    got = [t.changes[0] for t, _ in take(stream, 5)]
    stream.close()
    assert isinstance(got[2], UpdatedRecord) and got[2].record["a"] == "again"
    assert isinstance(got[4], DeletedRecord) and got[4].old_record == {"id": "3", "a": "y"}


def test_restart_same_data_dir_resume_without_duplicates(tmp_path):
    data = str(tmp_path / "v")
    server = EmbeddedVaxine(data, api_port=0, replication_port=0).start()
    from electric.vaxine.pool import VaxinePool

    pool = VaxinePool("127.0.0.1", server.api_port, size=2)
    for i in range(4):
        rows.write_transaction(pool, tx(insert(i, c="v")), pk)
    stream = WalStream("127.0.0.1", server.replication_port, 0)
    before = take(stream, 4)
    stream.close()
    api_port, repl_port = server.api_port, server.replication_port
    server.stop()
    server = EmbeddedVaxine(data, api_port=api_port, replication_port=repl_port).start()
    try:
        stream = WalStream("127.0.0.1", repl_port, before[1][1])
        assert [o for _, o in take(stream, 2)] == [o for _, o in before[2:]]
        rows.write_transaction(pool, tx(insert(99, c="after")), pk)  # stale idle conn replaced
        (t, o), = take(stream, 1)
        assert row_of(t.changes[0])["id"] == "99" and o > before[-1][1]
        with pytest.raises(gevent.queue.Empty):
            stream.get(timeout=0.2)
        stream.close()
    finally:
        pool.close()
        server.stop()


def test_stream_reconnects_after_server_restart_without_gaps(tmp_path):
    data = str(tmp_path / "v")
    server = EmbeddedVaxine(data, api_port=0, replication_port=0).start()
    ports = server.api_port, server.replication_port
    from electric.vaxine.pool import VaxinePool

    pool = VaxinePool("127.0.0.1", ports[0], size=2)
    stream = WalStream("127.0.0.1", ports[1], 0, min_backoff_s=0.05, max_backoff_s=0.2)
    try:
        for i in range(3):
            rows.write_transaction(pool, tx(insert(i)), pk)
        first = take(stream, 2)  # one more is buffered or in flight
        server.stop()
        server = EmbeddedVaxine(data, api_port=ports[0], replication_port=ports[1]).start()
        for i in range(3, 6):
            rows.write_transaction(pool, tx(insert(i)), pk)
        rest = take(stream, 4)
        ids = [row_of(t.changes[0])["id"] for t, _ in first + rest]
        assert ids == [str(i) for i in range(6)]
        assert stream.reconnects >= 1
    finally:
        stream.close()
        pool.close()
        server.stop()


def _raw(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    return s


def test_malformed_frames_close_only_that_connection(vaxine, pool):
    for payload in [b"\x00\x00\x00\x04\xfa\x0a\x01x", b"\x00\x00\x00\x00",
                    b"\xff\xff\xff\xff", b"\x00\x00\x00\x04\x77\x0a\x05\x83"]:
        s = _raw(vaxine.api_port)
        s.sendall(payload)
        assert s.recv(100) == b""  # closed without a reply
        s.close()
    s = _raw(vaxine.replication_port)
    s.sendall(b"\x00\x00\x00\x05hello")
    assert s.recv(100) == bytes.fromhex("00000017" "8368026400056572726f726400096261645f70726f746f")
    assert s.recv(100) == b""
    s.close()
    s = _raw(vaxine.replication_port)
    s.sendall(b"\x7f\xff\xff\xff")  # oversized request length
    assert s.recv(100) == b""
    s.close()
    # 135 (valid protobuf, no handler) → ApbErrorResp, connection stays usable
    with pool.connection() as conn:
        from electric.pb import antidote_pb2 as pb

        reply = conn.request(pb.ApbValidateOrReadObjects(transaction_descriptor=b"x"))
        assert isinstance(reply, pb.ApbErrorResp) and reply.errmsg.startswith(b"error: ")
        conn.start_transaction()
    assert rows.write_transaction(pool, tx(insert(1)), pk)


def test_transaction_larger_than_a_frame_limit_fraction_is_written_whole(vaxine, pool):
    # 300 rows x 100 KB: ~30 MB of operations, split into several size-bounded requests of
    # one interactive transaction; the log must hold it as one transaction, every row whole.
    big = [insert(i, content=(f"{i:04d}" * 25_000)) for i in range(300)]
    t = tx(*big)
    assert len(rows.request_chunks(rows.transaction_op_bytes(t, pk))) > 1
    assert rows.write_transaction(pool, t, pk)
    stream = WalStream("127.0.0.1", vaxine.replication_port, 0)
    try:
        (got, _offset), = take(stream, 1, timeout=30)
    finally:
        stream.close()
    assert len(got.changes) == 300
    assert sorted((row_of(c)["id"], row_of(c)["content"]) for c in got.changes) == sorted(
        (str(i), f"{i:04d}" * 25_000) for i in range(300))


def test_status_reports_size_objects_and_log_length(tmp_path):
    from electric.vaxine.pool import VaxinePool

    server = EmbeddedVaxine(str(tmp_path), api_port=0, replication_port=0).start()
    try:
        pool = VaxinePool("127.0.0.1", server.api_port, size=1)
        tx = Transaction([NewRecord(("public", "t"), {"id": str(i)}) for i in range(3)],
                         datetime.now(UTC))
        rows.write_transaction(pool, tx, lambda _r: ["id"])
        pool.close()
        status = server.status()
        assert status["objects"] == 4  # three rows and metadata:0
        assert status["log_transactions"] == 1
        assert status["last_offset"] > 0 and status["log_end"] > status["last_offset"]
        assert status["bytes"] > 0 and status["failed"] is False
        assert status["open_transactions"] == 0
    finally:
        server.stop()


def test_a_stream_sharing_the_servers_memo_takes_commits_from_it(tmp_path):
    memo = EncodingMemo()
    server = EmbeddedVaxine(str(tmp_path / "memo"), api_port=0, replication_port=0,
                            memo=memo).start()
    try:
        stream = WalStream("127.0.0.1", server.replication_port, 0, memo=memo)
        wait_until(lambda: stream.connected, what="stream started")
        p = VaxinePool("127.0.0.1", server.api_port, size=1)
        try:
            assert rows.write_transaction(p, tx(insert(1, content="m", other=None)), pk)
        finally:
            p.close()
        (got, _offset), = take(stream, 1)
        stream.close()
        assert row_of(got.changes[0]) == {"id": "1", "content": "m", "other": None}
        assert memo.hits == 1
    finally:
        server.stop()
