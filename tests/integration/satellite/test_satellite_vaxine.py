"""Satellite server against the real embedded Vaxine: client writes become Vaxine
transactions (through the shared pool and the row writer), acked only once stored."""

from __future__ import annotations

import pytest

from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.vaxine import antidote, rows
from tests.integration.satellite.sat_harness import (
    TABLE,
    SatClient,
    ServerThread,
    delete,
    insert,
    oplog,
    relation,
    update,
)
from tests.support.waiting import wait_until

UID = "911fee88-2a0f-4fff-9d71-0c3eb7c9a380"


def with_vaxine(data_dir):
    def setup(st):
        from electric.vaxine.embedded.server import EmbeddedVaxine
        from electric.vaxine.pool import VaxinePool

        st.vaxine = EmbeddedVaxine(str(data_dir), api_port=0, replication_port=0).start()
        st.pool = VaxinePool("127.0.0.1", st.vaxine.api_port, size=4)
        pks = {TABLE.relation: list(TABLE.primary_keys)}
        st.write_fn = lambda tx: rows.write_transaction(st.pool, tx, lambda rel: pks[rel])

    def teardown(st):
        st.pool.close()
        st.vaxine.stop()

    return setup, teardown


def read_row(st, row_key: str):
    obj = antidote.bound_object(b"rows:" + row_key.encode(), antidote.RRMAP)

    def read():
        with st.pool.transaction() as txn:
            (resp,) = txn.read([obj])
            txn.commit()
        return antidote.read_value(resp)

    value = st.call(read)
    columns = {
        k.decode(): rows.decode_value(v)
        for (k, _t), v in value.get((b"row", antidote.RRMAP), {}).items()
    }
    deleted = value.get((b"deleted?", antidote.FLAG_DW))
    return columns, deleted


@pytest.fixture
def vx_server(tmp_path):
    setup, teardown = with_vaxine(tmp_path / "vaxine")
    srv = ServerThread(str(tmp_path / "offsets.dat"), setup=setup, teardown=teardown).start()
    yield srv
    srv.stop()


def test_i4_insert_update_delete_reach_vaxine(vx_server):
    c = SatClient(vx_server.url)
    c.auth()
    c.send(relation(11111))
    c.send(oplog(b"1", insert(11111, UID.encode(), b"Hello from Satellite", b"")))
    assert c.recv() == frames.ping_resp(b"1")
    columns, deleted = read_row(vx_server, f"public:entries:{UID}")
    assert columns == {"id": UID, "content": "Hello from Satellite", "content_b": ""}
    assert deleted is False
    c.send(oplog(b"2", update(11111, [UID.encode(), b"How are you?", b""])))
    assert c.recv() == frames.ping_resp(b"2")
    assert read_row(vx_server, f"public:entries:{UID}")[0]["content"] == "How are you?"
    c.send(oplog(b"3", delete(11111, UID.encode(), b"How are you?", b"")))
    assert c.recv() == frames.ping_resp(b"3")
    _, deleted = read_row(vx_server, f"public:entries:{UID}")
    assert deleted is True
    assert vx_server.offsets.get_satellite_lsn("device-id-0000") == b"3"
    c.close()


def test_many_transactions_one_socket(vx_server):
    c = SatClient(vx_server.url)
    c.auth()
    c.send(relation(0))
    n = 120  # more than the reference's 50-transaction stall point
    for i in range(n):
        c.send(oplog(str(i).encode(), insert(0, f"row-{i}".encode(), b"x", b"")))
    acks = [c.recv(10) for _ in range(n)]
    assert [a.lsn for a in acks] == [str(i).encode() for i in range(n)]
    assert read_row(vx_server, "public:entries:row-119")[0]["content"] == "x"
    c.close()


def test_vaxine_down_then_back(tmp_path):
    """Writes retry while Vaxine is unreachable and are acked once it is back."""
    setup, teardown = with_vaxine(tmp_path / "vaxine")
    srv = ServerThread(
        str(tmp_path / "o.dat"),
        setup=setup,
        teardown=teardown,
        server_kwargs={"write_retry_total": 30.0},
    ).start()
    try:
        c = SatClient(srv.url)
        c.auth()
        c.send(relation(0))
        c.send(oplog(b"a", insert(0, b"k1", b"v", b"")))
        assert c.recv() == frames.ping_resp(b"a")
        port = srv.vaxine.api_port
        srv.call(srv.vaxine.stop)
        c.send(oplog(b"b", insert(0, b"k2", b"v", b"")))
        c.assert_silent(0.5)  # not acked while Vaxine is down
        from electric.vaxine.embedded.server import EmbeddedVaxine

        srv.vaxine = srv.call(
            lambda: EmbeddedVaxine(
                str(tmp_path / "vaxine"), api_port=port, replication_port=0
            ).start()
        )
        msg, _ = c.recv_until(pb.SatPingResp, timeout=15)
        assert msg.lsn == b"b"
        assert read_row(srv, "public:entries:k2")[0]["id"] == "k2"
        c.close()
    finally:
        srv.stop()


# -- outgoing: the real WAL stream ------------------------------------------------------------


def with_vaxine_stream(data_dir):
    setup_writer, teardown = with_vaxine(data_dir)

    def setup(st):
        from electric.vaxine.stream import WalStream

        setup_writer(st)
        st.open_stream = lambda offset: WalStream(
            "127.0.0.1", st.vaxine.replication_port, offset, name="satellite-test"
        )

    return setup, teardown


@pytest.fixture
def full_server(tmp_path):
    setup, teardown = with_vaxine_stream(tmp_path / "vaxine")
    srv = ServerThread(str(tmp_path / "offsets.dat"), setup=setup, teardown=teardown).start()
    yield srv
    srv.stop()


def write(st, *records):
    from datetime import UTC, datetime

    from electric.changes import NewRecord, Transaction

    tx = Transaction(
        [NewRecord(TABLE.relation, r) for r in records],
        datetime.now(UTC),
        origin="postgres_1",
        publication="all_tables",
    )
    st.call(lambda: st.write_fn(tx))


def test_o3_o4_full_history_resume_and_eof(full_server):
    from electric.satellite.lsn import decode_offset

    write(full_server, {"id": "a", "content": "1", "content_b": None})
    write(full_server, {"id": "b", "content": "2", "content_b": "x"})
    c = SatClient(full_server.url)
    c.auth()
    c.send(pb.SatInStartReplicationReq(lsn=b"0"))
    c.recv_until(pb.SatInStartReplicationResp)
    rel, _ = c.recv_until(pb.SatRelation)
    assert rel.table_name == "entries" and rel.relation_id == TABLE.oid
    logs = [c.recv_until(pb.SatOpLog)[0] for _ in range(2)]
    ops = [log.ops[1] for log in logs]
    assert [op.WhichOneof("op") for op in ops] == ["update", "update"]  # materialised rows
    assert list(ops[0].update.row_data) == [b"a", b"1", b""]  # NULL -> empty bytes
    assert list(ops[0].update.old_row_data) == []
    offsets = [decode_offset(log.ops[0].begin.lsn) for log in logs]
    assert offsets[0][1] < offsets[1][1]
    assert logs[0].ops[0].begin.commit_timestamp == logs[0].ops[-1].commit.commit_timestamp > 0
    # resume after the first: only the second comes again
    c.send(pb.SatInStopReplicationReq())
    c.recv_until(pb.SatInStopReplicationResp)
    c.send(pb.SatInStartReplicationReq(lsn=logs[0].ops[0].begin.lsn))
    c.recv_until(pb.SatInStartReplicationResp)
    again, skipped = c.recv_until(pb.SatOpLog)
    assert any(isinstance(m, pb.SatRelation) for m in skipped)  # re-announced
    assert again.ops[0].begin.lsn == logs[1].ops[0].begin.lsn
    # eof: a new socket sees only what is written after it subscribed
    d = SatClient(full_server.url)
    d.auth(client_id="late")
    attached = full_server.status()["shared_tail"]["attached"]
    d.send(pb.SatInStartReplicationReq(lsn=b"eof"))
    d.recv_until(pb.SatInStartReplicationResp)
    # It follows the live log once attached to the shared tail, and the tail's stream has
    # started (at the end of the log).
    tail = full_server.server.tail
    wait_until(lambda: full_server.status()["shared_tail"]["attached"] > attached
               and tail.stream is not None and tail.stream.connected, 5,
               "the late client on the shared tail", step=0.01)
    write(full_server, {"id": "c", "content": "3", "content_b": ""})
    new, _ = d.recv_until(pb.SatOpLog)
    assert new.ops[1].update.row_data[0] == b"c"
    # the first client, still streaming, gets it too
    live, _ = c.recv_until(pb.SatOpLog)
    assert live.ops[1].update.row_data[0] == b"c"
    c.close()
    d.close()


def test_satellite_write_reaches_other_client(full_server):
    reader = SatClient(full_server.url)
    reader.auth(client_id="reader")
    reader.send(pb.SatInStartReplicationReq(lsn=b"0"))
    reader.recv_until(pb.SatInStartReplicationResp)
    writer = SatClient(full_server.url)
    writer.auth(client_id="writer")
    writer.send(relation(0))
    writer.send(oplog(b"w1", insert(0, UID.encode(), b"Hello from Satellite", b"")))
    assert writer.recv_until(pb.SatPingResp)[0].lsn == b"w1"
    got, _ = reader.recv_until(pb.SatOpLog)
    assert list(got.ops[1].update.row_data) == [UID.encode(), b"Hello from Satellite", b""]
    writer.send(oplog(b"w2", delete(0, UID.encode(), b"Hello from Satellite", b"")))
    assert writer.recv_until(pb.SatPingResp)[0].lsn == b"w2"
    gone, _ = reader.recv_until(pb.SatOpLog)
    assert gone.ops[1].WhichOneof("op") == "delete"
    assert gone.ops[1].delete.old_row_data[0] == UID.encode()
    reader.close()
    writer.close()
