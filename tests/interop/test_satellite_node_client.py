"""Real-client interop: npm electric-sql@0.1.3 SatelliteClient under Node against our server.

This file runs the server in-process with a scripted WAL stream and a recording writer, so
it checks the protocol conversation itself, fast. The full path through Vaxine and two
Postgres instances is in test_satellite_node_e2e.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from electric.changes import DeletedRecord, NewRecord, Transaction, UpdatedRecord
from electric.satellite.lsn import encode_offset
from tests.integration.satellite.sat_harness import TABLE, ServerThread
from tests.interop.node_peer import NodePeer
from tests.support.waiting import wait_until

NODE_RELATION = {
    "id": 0,
    "schema": "public",
    "table": "entries",
    "tableType": 0,
    "columns": [
        {"name": "id", "type": "TEXT"},
        {"name": "content", "type": "TEXT"},
        {"name": "content_b", "type": "TEXT"},
    ],
}
TS = datetime(2022, 11, 23, tzinfo=UTC)


@pytest.fixture
def server(tmp_path):
    srv = ServerThread(str(tmp_path / "offsets.dat")).start()
    yield srv
    srv.stop()


@pytest.fixture
def peer():
    p = NodePeer()
    yield p
    p.close()


def connect(peer, server, app_id="device-1"):
    peer.call("connect", address="127.0.0.1", port=server.port, appId=app_id, token="user-1")
    assert peer.call("auth")["serverId"] == server.cluster_id


def test_two_way_replication_with_real_client(server, peer):
    uid = str(uuid.uuid4())
    server.stream.push(
        Transaction(
            [UpdatedRecord(TABLE.relation, {"id": uid, "content": "from pg", "content_b": None})],
            TS,
        ),
        (5159, 9941),
    )
    connect(peer, server)
    peer.call("start", lsn_hex=b"0".hex())  # full history
    tx = peer.wait(lambda e: e["event"] == "tx", what="the streamed transaction")
    assert tx["lsn_hex"] == encode_offset((5159, 9941)).hex()
    (change,) = tx["changes"]
    assert change["type"] == "UPDATE" and change["table"] == "entries"
    assert change["record"] == {"id": uid, "content": "from pg", "content_b": ""}

    # The client's own writes: insert, update, delete, each acked after the (fake) commit.
    own = str(uuid.uuid4())
    steps = [
        (
            "1",
            {"type": "INSERT", "record": {"id": own, "content": "hi from 0.1.3", "content_b": "b"}},
        ),
        (
            "2",
            {
                "type": "UPDATE",
                "record": {"id": own, "content": "changed", "content_b": "b"},
                "oldRecord": {"id": own, "content": "hi from 0.1.3", "content_b": "b"},
            },
        ),
        ("3", {"type": "DELETE", "oldRecord": {"id": own, "content": "changed", "content_b": "b"}}),
    ]
    for lsn, change in steps:
        peer.call("tx", lsn=lsn, relation=NODE_RELATION, changes=[change])
        peer.wait(lambda e, lsn=lsn: e["event"] == "ack" and e["lsn"] == lsn, what=f"ack {lsn}")
    written = server.writer.written
    assert [type(t.changes[0]) for t in written] == [NewRecord, UpdatedRecord, DeletedRecord]
    assert written[0].changes[0].record == {"id": own, "content": "hi from 0.1.3", "content_b": "b"}
    assert written[1].changes[0].record["content"] == "changed"
    assert written[2].changes[0].old_record["id"] == own
    assert all(t.origin == "device-1" for t in written)
    assert server.offsets.get_satellite_lsn("device-1") == b"3"

    # More rows stream live while the client is subscribed.
    server.stream.push(
        Transaction([NewRecord(TABLE.relation, {"id": "x", "content": "live"})], TS), (9942, 9990)
    )
    live = peer.wait(lambda e: e["event"] == "tx" and e["lsn_hex"] != tx["lsn_hex"])
    assert live["changes"][0]["record"]["content"] == "live"
    assert peer.errors() == []


def test_real_client_stop_start_resume_and_reconnect(server, peer):
    for n in range(3):
        server.stream.push(
            Transaction([NewRecord(TABLE.relation, {"id": f"r{n}", "content": str(n)})], TS),
            (n, n),
        )
    connect(peer, server)
    peer.call("start", lsn_hex=b"0".hex())
    got = [peer.wait(lambda e: e["event"] == "tx")["lsn_hex"] for _ in range(3)]
    assert got == [encode_offset((n, n)).hex() for n in range(3)]
    peer.call("stop")
    # Resume from the last received lsn: relations are re-announced, nothing is repeated.
    peer.call("start", lsn_hex=got[-1])
    server.stream.push(
        Transaction([NewRecord(TABLE.relation, {"id": "r3", "content": "3"})], TS), (3, 3)
    )
    nxt = peer.wait(lambda e: e["event"] == "tx")
    assert nxt["lsn_hex"] == encode_offset((3, 3)).hex()
    assert nxt["changes"][0]["record"]["id"] == "r3"
    assert peer.errors() == []

    # Reconnect with the same app id right after closing: the 1 s grace lets it in, and the
    # server's start request carries the last durable client lsn.
    peer.call(
        "tx",
        lsn="7",
        relation=NODE_RELATION,
        changes=[{"type": "INSERT", "record": {"id": "z", "content": "z", "content_b": "z"}}],
    )
    peer.wait(lambda e: e["event"] == "ack" and e["lsn"] == "7")
    peer.call("close")
    second = NodePeer()
    try:
        connect(second, server)
        wait_until(lambda: server.status()["clients_connected"] == 1, 5.0, step=0.01)
        assert server.offsets.get_satellite_lsn("device-1") == b"7"
    finally:
        second.close()


def test_real_client_sees_error_for_bad_token(tmp_path, peer):
    import base64

    from electric.satellite.auth import JwtAuth

    auth = JwtAuth(base64.b64decode("BdvUDsCk5QbwkxI0fpEFmM/LNtFvwPZeMfHxvcOoS7s="), "c1")
    srv = ServerThread(str(tmp_path / "o.dat"), auth=auth, cluster_id="c1").start()
    try:
        peer.call("connect", address="127.0.0.1", port=srv.port, appId="a", token="not-a-jwt")
        peer.send(cmd="auth")
        result = peer.wait(lambda e: e.get("cmd") == "auth")
        assert result["event"] == "fail" or result.get("serverId") is None
        peer.wait(lambda e: e["event"] == "closed")
        good, _ = auth.mint("u1")
        p2 = NodePeer()
        try:
            p2.call("connect", address="127.0.0.1", port=srv.port, appId="a", token=good)
            assert p2.call("auth")["serverId"] == "c1"
        finally:
            p2.close()
    finally:
        srv.stop()
