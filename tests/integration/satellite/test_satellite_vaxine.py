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
