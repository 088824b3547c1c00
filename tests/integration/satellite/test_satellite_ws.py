"""The websocket server over real sockets (fake Vaxine writer/stream, real offset file).

Covers docs/protocols.md §1.3-§1.6 and every kind of malformed input: each case checks the
documented reply, that the process keeps serving, and that another session is unaffected.
"""

from __future__ import annotations

import base64
import http.client
import socket
import time
from datetime import UTC, datetime

import pytest
import websocket

from electric.changes import NewRecord, Transaction, UpdatedRecord
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.satellite.auth import JwtAuth
from electric.satellite.lsn import encode_offset
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

SECRET = base64.b64decode("BdvUDsCk5QbwkxI0fpEFmM/LNtFvwPZeMfHxvcOoS7s=")
CLUSTER = "electric-development-cluster-0000"
USER = "a5408365-7bf4-48b1-afe2-cb8171631d7c"
TS = datetime(2022, 11, 23, tzinfo=UTC)


@pytest.fixture
def server(tmp_path):
    srv = ServerThread(str(tmp_path / "offsets.dat")).start()
    yield srv
    srv.stop()


@pytest.fixture
def jwt_server(tmp_path):
    auth = JwtAuth(SECRET, CLUSTER, issuer="electric-sql.com")
    srv = ServerThread(str(tmp_path / "offsets.dat"), auth=auth).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    clients = []

    def make(**kw):
        c = SatClient(server.url, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def assert_still_serving(server, client_id="witness"):
    c = SatClient(server.url)
    c.auth(client_id=client_id)
    c.send(pb.SatPingReq())
    assert c.recv_frame() == bytes.fromhex("060a00")
    c.close()


# -- HTTP level -------------------------------------------------------------------------------


def http_get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_other_paths_404_plain_get_426(server):
    assert http_get(server.port, "/").status == 404
    assert http_get(server.port, "/wsx").status == 404
    resp = http_get(server.port, "/ws")
    assert resp.status == 426
    assert resp.getheader("upgrade").lower() == "websocket"
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(f"ws://127.0.0.1:{server.port}/other", timeout=5)


def raw_handshake(port, extra=b""):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + extra
        + b"\r\n"
    )
    return s


def test_offered_subprotocol_is_declined(server):
    s = raw_handshake(server.port, b"Sec-WebSocket-Protocol: satellite\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1024)
    assert head.startswith(b"HTTP/1.1 101")
    assert b"sec-websocket-protocol" not in head.lower()
    s.close()


# -- session and auth (§1.3, §1.6) ----------------------------------------------------------------


def test_s1_s2_s6_auth_and_ping(client):
    c = client()
    start = c.auth()
    assert start == frames.server_start_req(b"")
    c.send(pb.SatPingReq())
    assert c.recv_frame() == bytes.fromhex("060a00")


def test_s3_s4_rubbish_before_and_after_auth(server, client):
    c = client()
    c.send_raw(b"rubbish")
    c.expect_error_close(frames.INTERNAL)
    c = client()
    c.auth()
    c.send_raw(b"rubbish")
    c.expect_error_close(frames.INTERNAL)
    assert_still_serving(server)


def test_s5_ping_before_auth(client):
    c = client()
    c.send(pb.SatPingReq())
    c.expect_error_close(frames.AUTH_REQUIRED)


def test_s7_s8_jwt_tokens(jwt_server):
    auth = JwtAuth(SECRET, CLUSTER, issuer="electric-sql.com")
    valid, _ = auth.mint(USER)
    expired, _ = auth.mint(USER, ttl=-24 * 3600)
    other, _ = JwtAuth(SECRET, "some-other-cluster-id").mint(USER)
    results = []
    for n, token in enumerate([valid, "invalid_token", expired, other, valid]):
        c = SatClient(jwt_server.url)
        c.send(pb.SatAuthReq(id=f"client-{n}", token=token))
        msg = c.recv()
        results.append(
            type(msg).__name__ if not isinstance(msg, pb.SatErrorResp) else msg.error_type
        )
        c.close()
    assert results == [
        "SatAuthResp",
        frames.AUTH_REQUIRED,
        frames.AUTH_REQUIRED,
        frames.AUTH_REQUIRED,
        "SatAuthResp",
    ]


def test_s9_duplicate_client_id(server, client):
    a = client()
    a.auth(client_id="dup")
    b = client()
    t0 = time.monotonic()
    b.send(pb.SatAuthReq(id="dup", token="t"))
    b.expect_error_close(frames.INVALID_REQUEST)
    assert time.monotonic() - t0 >= 0.9  # waited out the reconnect grace
    a.send(pb.SatPingReq())
    assert a.recv_frame() == bytes.fromhex("060a00")


def test_m19_reconnect_within_grace_wins(server, client):
    a = client()
    a.auth(client_id="re")
    b = client()
    b.send(pb.SatAuthReq(id="re", token="t"))
    time.sleep(0.2)
    a.close()  # the old socket dies inside the grace window
    assert isinstance(b.recv(), pb.SatAuthResp)


def test_s10_status_tracks_clients(server, client):
    c = client()
    c.auth(client_id="counted")
    wait_until(lambda: server.status()["clients_connected"] == 1, 5.0, step=0.01)
    c.close()
    wait_until(lambda: server.status()["clients_connected"] == 0, 2.0, step=0.01)


# -- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize("authenticated", [False, True])
@pytest.mark.parametrize(
    "payload, code",
    [
        (b"", frames.INTERNAL),  # M1
        (bytes([13]) + b"\x0a\x01x", frames.INTERNAL),  # M2 type 13
        (bytes([99]), frames.INTERNAL),  # M2
        (bytes.fromhex("01 0a ff"), frames.INTERNAL),  # M3
    ],
)
def test_m1_m2_m3_undecodable(server, client, authenticated, payload, code):
    c = client()
    if authenticated:
        c.auth()
    c.send_raw(payload)
    c.expect_error_close(code)
    other = client()
    other.auth(client_id="bystander")
    other.send(pb.SatPingReq())
    assert other.recv_frame() == bytes.fromhex("060a00")


def test_m4_text_frame(server, client):
    c = client()
    c.auth()
    c.ws.send("hello")
    seen = c.expect_closed()
    assert seen[-1] == frames.error(frames.INVALID_REQUEST)
    assert c.close_code == 1003
    assert_still_serving(server)


def test_m5_ws_ping_answered_and_session_survives(client):
    c = client()
    c.auth()
    c.ws.ping(b"hi")
    c.ws.settimeout(5)
    opcode, data = c.ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PONG and data == b"hi"
    c.ws.pong(b"unsolicited")
    c.send(pb.SatPingReq())
    assert c.recv_frame() == bytes.fromhex("060a00")


@pytest.mark.parametrize(
    "msg, code",
    [
        (pb.SatAuthReq(id="", token="t"), frames.INVALID_REQUEST),  # M6
        (pb.SatAuthReq(id="c", token=""), frames.INVALID_REQUEST),
        (pb.SatErrorResp(), frames.AUTH_REQUIRED),  # M16 unauthenticated
    ],
)
def test_before_auth_rows(client, msg, code):
    c = client()
    c.send(msg)
    c.expect_error_close(code)


@pytest.mark.parametrize(
    "msg",
    [
        pb.SatAuthReq(id="device-id-0000", token="t"),  # M7
        pb.SatInStartReplicationReq(lsn=b""),  # M8
        pb.SatInStartReplicationReq(lsn=b"\0\0\0\0"),  # M8 (TS 0.3.0 default)
        pb.SatInStartReplicationReq(lsn=b"0", options=[frames.OPT_SYNC_MODE]),  # M9
        pb.SatInStopReplicationReq(),  # M10
        pb.SatAuthResp(id="x"),  # M17
        pb.SatGetServerInfoReq(),
        pb.SatGetServerInfoResp(),
    ],
)
def test_after_auth_invalid_request_rows(server, client, msg):
    c = client()
    c.auth()
    c.send(msg)
    c.expect_error_close(frames.INVALID_REQUEST)
    assert_still_serving(server)


def test_m8_first_lsn_honoured(server, client):
    server.stream.push(Transaction([], TS), (1, 1))
    c = client()
    c.auth()
    c.send(pb.SatInStartReplicationReq(lsn=b"\0\0\0\0", options=[frames.OPT_FIRST_LSN]))
    c.recv_until(pb.SatInStartReplicationResp)
    log, _ = c.recv_until(pb.SatOpLog)
    assert log.ops[0].begin.lsn == encode_offset((1, 1))


def test_m11_m12_tolerated(client):
    c = client()
    c.auth()
    c.send(pb.SatInStartReplicationResp())  # M11: incoming already active
    c.send(frames.ping_resp(b""))  # M12
    c.send(pb.SatPingReq())
    assert c.recv_frame() == bytes.fromhex("060a00")


def test_m13_oplog_before_incoming_active_ignored(server, client):
    c = client()
    c.auth(answer_start=False)
    c.send(relation(1))
    c.send(oplog(b"1", insert(1, b"a", b"b", b"c")))
    c.send(pb.SatPingReq())
    assert c.recv_frame() == bytes.fromhex("060a00")
    assert server.writer.written == []


@pytest.mark.parametrize(
    "log",
    [
        oplog(b"1", insert(1, b"a"), begin=False),  # op before begin
        oplog(b"1", insert(7, b"a")),  # unknown relation
        oplog(b""),  # empty lsn
        oplog(b"1", insert(1)),  # empty row_data
        pb.SatOpLog(
            ops=[
                pb.SatTransOp(begin=pb.SatOpBegin(lsn=b"1")),
                pb.SatTransOp(begin=pb.SatOpBegin(lsn=b"2")),
            ]
        ),
        oplog(b"1", ts=2**63),  # not a valid timestamp
        oplog(b"1", insert(2, b"x")),  # M15: table not replicated
        oplog(b"1", delete(1)),  # M15: no primary key
    ],
)
def test_m14_m15_oplog_violations(server, client, log):
    c = client()
    c.auth()
    c.send(relation(1))
    c.send(
        pb.SatRelation(
            schema_name="public",
            table_name="nope",
            relation_id=2,
            columns=[pb.SatRelationColumn(name="id", type="text")],
        )
    )
    c.send(log)
    c.expect_error_close(frames.INVALID_REQUEST)
    assert server.writer.written == []
    assert_still_serving(server)


def test_m16_client_error_closes_quietly(client):
    c = client()
    c.auth()
    c.send(pb.SatErrorResp(error_type=frames.REPLICATION_FAILED))
    assert c.expect_closed() == []


def test_m18_unresponsive_client_dropped(tmp_path):
    srv = ServerThread(str(tmp_path / "o.dat"), server_kwargs={"ping_interval": 0.2}).start()
    try:
        c = SatClient(srv.url)
        c.auth()
        t0 = time.monotonic()
        seen = c.expect_closed(timeout=5)
        assert [type(m).__name__ for m in seen] == ["SatPingReq"]
        assert c.close_code is None
        assert time.monotonic() - t0 < 2
        # a responsive client stays
        c2 = SatClient(srv.url)
        c2.auth(client_id="responsive")
        for _ in range(3):
            msg = c2.recv(2)
            assert isinstance(msg, pb.SatPingReq)
            c2.send(frames.ping_resp(None))
        c2.close()
    finally:
        srv.stop()


def test_oversized_message_refused_before_reading(tmp_path):
    srv = ServerThread(str(tmp_path / "o.dat"), server_kwargs={"max_message_bytes": 1024}).start()
    try:
        c = SatClient(srv.url)
        c.auth()
        # Only a header announcing 2^40 bytes is sent; the server must not wait for the body.
        header = bytes([0x82, 0x80 | 127]) + (2**40).to_bytes(8, "big") + b"\0\0\0\0"
        c.ws.sock.sendall(header)
        c.expect_closed(timeout=5)
        assert c.close_code == 1009  # message too big
        SatClient(srv.url).auth(client_id="next")
    finally:
        srv.stop()


def test_abrupt_disconnects_do_not_hurt(server):
    for _ in range(5):
        s = raw_handshake(server.port)
        s.sendall(bytes([0x82, 0x85]))  # half a frame, then gone
        s.close()
    assert_still_serving(server)


# -- outgoing (§1.4) ----------------------------------------------------------------------------


def tx_insert(n):
    return Transaction([NewRecord(TABLE.relation, {"id": f"id-{n}", "content": "a"})], TS)


def test_o1_relation_then_oplogs_in_order(server, client):
    c = client()
    c.auth()
    c.send(pb.SatInStartReplicationReq(lsn=b"eof"))
    c.recv_until(pb.SatInStartReplicationResp)
    wait_until(lambda: server.stream.opened == ["eof"], 5.0, step=0.01)
    for n in range(11):
        server.stream.push(tx_insert(n), (n, n))
    rel, skipped = c.recv_until(pb.SatRelation)
    assert rel.relation_id == TABLE.oid and [col.name for col in rel.columns] == [
        "id",
        "content",
        "content_b",
    ]
    for n in range(11):
        log, _ = c.recv_until(pb.SatOpLog)
        assert log.ops[0].begin.lsn == encode_offset((n, n))
        assert list(log.ops[1].insert.row_data) == [f"id-{n}".encode(), b"a", b""]


def test_o2_stop_and_resume_from_lsn(server, client):
    c = client()
    c.auth()
    c.send(pb.SatInStartReplicationReq(lsn=b"0"))
    c.recv_until(pb.SatInStartReplicationResp)
    for n in range(5):
        server.stream.push(tx_insert(n), (n, n))
    last = None
    for _ in range(3):
        log, _ = c.recv_until(pb.SatOpLog)
        last = log.ops[0].begin.lsn
    c.send(pb.SatInStopReplicationReq())
    _, skipped = c.recv_until(pb.SatInStopReplicationResp)
    assert all(isinstance(m, pb.SatOpLog | pb.SatRelation) for m in skipped)  # no stray error
    wait_until(lambda: server.stream.closed == 1, 5.0, step=0.01)
    c.send(pb.SatInStartReplicationReq(lsn=last))
    c.recv_until(pb.SatInStartReplicationResp)
    rel, _ = c.recv_until(pb.SatRelation)  # re-announced after the restart
    got = []
    for _ in range(2):
        log, _ = c.recv_until(pb.SatOpLog)
        got.append(log.ops[0].begin.lsn)
    assert got == [encode_offset((3, 3)), encode_offset((4, 4))]


def test_private_stream_failure_reported_and_restartable(tmp_path):
    srv = ServerThread(str(tmp_path / "o.dat"), server_kwargs={"shared_tail": False}).start()
    try:
        srv.stream.fail_next = ConnectionRefusedError("vaxine down")
        c = SatClient(srv.url)
        c.auth()
        c.send(pb.SatInStartReplicationReq(lsn=b"eof"))
        c.recv_until(pb.SatInStartReplicationResp)
        err, _ = c.recv_until(pb.SatErrorResp)
        assert err.error_type == frames.REPLICATION_FAILED
        c.send(pb.SatInStartReplicationReq(lsn=b"eof"))
        c.recv_until(pb.SatInStartReplicationResp)
        wait_until(lambda: len(srv.stream.opened) == 2, 5.0, step=0.01)
        srv.stream.push(tx_insert(1), (1, 1))
        c.recv_until(pb.SatOpLog)
        c.close()
    finally:
        srv.stop()


def test_shared_tail_failure_is_invisible_to_clients(server, client):
    server.stream.fail_next = ConnectionRefusedError("vaxine down")
    c = client()
    c.auth()
    c.send(pb.SatInStartReplicationReq(lsn=b"eof"))
    c.recv_until(pb.SatInStartReplicationResp)
    # The tail failed and reopened; the client reads privately from the end of the log
    # meanwhile: both streams have taken their start position before anything is pushed.
    wait_until(lambda: len(server.stream.positions) == 2, 5, step=0.01)
    server.stream.push(tx_insert(1), (1, 1))
    log, skipped = c.recv_until(pb.SatOpLog)
    assert not any(isinstance(m, pb.SatErrorResp) for m in skipped)
    assert log.ops[0].begin.lsn == encode_offset((1, 1))


# -- incoming (§1.5) ----------------------------------------------------------------------------


def test_i1_i2_write_ack_and_persisted_lsn(server, client):
    c = client()
    assert c.auth(client_id="dev") == frames.server_start_req(b"")
    c.send(
        pb.SatRelation(
            schema_name="public",
            table_name="entries",
            relation_id=100004,
            columns=[pb.SatRelationColumn(name=n, type="t") for n in ("id", "content")],
        )
    )
    ts = int(time.time() * 1000)
    c.send(oplog(b"some_long_internal_lsn", insert(100004, b"a", b"b"), ts=ts, commit=False))
    c.send(pb.SatOpLog(ops=[insert(100004, b"c", b"d"), pb.SatTransOp(commit=pb.SatOpCommit())]))
    ack = c.recv()
    assert ack == frames.ping_resp(b"some_long_internal_lsn")
    (tx,) = server.writer.written
    assert tx.origin == "dev" and tx.lsn == b"some_long_internal_lsn"
    assert int(tx.commit_timestamp.timestamp() * 1000) == ts
    assert tx.changes == [
        NewRecord(("public", "entries"), {"id": "a", "content": "b"}),
        NewRecord(("public", "entries"), {"id": "c", "content": "d"}),
    ]
    c.close()
    wait_until(lambda: server.status()["clients_connected"] == 0, 5.0, step=0.01)
    c2 = client()
    assert c2.auth(client_id="dev") == frames.server_start_req(b"some_long_internal_lsn")


def test_i4_sequence_acks_and_empty_transaction(server, client):
    c = client()
    c.auth()
    c.send(relation(11111))
    uid = b"911fee88-2a0f-4fff-9d71-0c3eb7c9a380"
    c.send(oplog(b"1", insert(11111, uid, b"Hello from Satellite", b"")))
    assert c.recv() == frames.ping_resp(b"1")
    c.send(oplog(b"2", update(11111, [uid, b"How are you?", b""])))
    assert c.recv() == frames.ping_resp(b"2")
    c.send(oplog(b"3", delete(11111, uid, b"How are you?", b"")))
    assert c.recv() == frames.ping_resp(b"3")
    c.send(oplog(b"4"))  # empty transaction: acked, nothing written
    assert c.recv() == frames.ping_resp(b"4")
    kinds = [type(t.changes[0]).__name__ for t in server.writer.written]
    assert kinds == ["NewRecord", "UpdatedRecord", "DeletedRecord"]
    assert server.offsets.get_satellite_lsn("device-id-0000") == b"4"


def test_incoming_never_stalls(server, client):
    c = client()
    c.auth()
    c.send(relation(0))
    n = 300
    ops = []
    for i in range(n):
        ops += oplog(str(i).encode(), insert(0, f"id-{i}".encode(), b"x", b"")).ops
    c.send(pb.SatOpLog(ops=ops))
    acks = [c.recv(10).lsn for _ in range(n)]
    assert acks == [str(i).encode() for i in range(n)]
    assert len(server.writer.written) == n


def test_write_retry_then_ack(server, client):
    server.writer.fail_times = 3
    c = client()
    c.auth()
    c.send(relation(0))
    c.send(oplog(b"r1", insert(0, b"id", b"x", b"")))
    assert c.recv() == frames.ping_resp(b"r1")
    assert server.writer.calls == 4


def test_writer_gives_up_stop_then_start(tmp_path):
    srv = ServerThread(str(tmp_path / "o.dat"), server_kwargs={"write_retry_total": 0.05}).start()
    try:
        c = SatClient(srv.url)
        c.auth()
        c.send(relation(0))
        c.send(oplog(b"ok", insert(0, b"id", b"x", b"")))
        assert c.recv() == frames.ping_resp(b"ok")
        srv.writer.fail_times = 1000
        c.send(oplog(b"lost", insert(0, b"id2", b"x", b"")))
        assert isinstance(c.recv(), pb.SatInStopReplicationReq)
        assert c.recv() == frames.server_start_req(b"ok")  # resume after the last durable one
        srv.writer.fail_times = 0
        c.send(pb.SatInStopReplicationResp())
        c.send(pb.SatInStartReplicationResp())
        c.send(relation(0))
        c.send(oplog(b"lost", insert(0, b"id2", b"x", b"")))  # the client re-sends
        assert c.recv() == frames.ping_resp(b"lost")
    finally:
        srv.stop()


def test_ack_only_after_offset_fsync(tmp_path):
    """The ack must not precede the durable offset write."""
    order = []
    srv = ServerThread(str(tmp_path / "o.dat"))
    srv.writer = lambda tx: order.append(("vaxine", tx.lsn))
    srv.start()
    try:
        real_put = srv.offsets.put_satellite_lsn

        def put(client_id, lsn):
            order.append(("fsync-start", lsn))
            time.sleep(0.2)  # a slow disk: the ack must still wait
            real_put(client_id, lsn)
            order.append(("fsync-done", lsn))

        srv.offsets.put_satellite_lsn = put
        c = SatClient(srv.url)
        c.auth()
        c.send(relation(0))
        c.send(oplog(b"d1", insert(0, b"id", b"x", b"")))
        assert c.recv() == frames.ping_resp(b"d1")
        order.append(("ack", b"d1"))
        assert order == [
            ("vaxine", b"d1"),
            ("fsync-start", b"d1"),
            ("fsync-done", b"d1"),
            ("ack", b"d1"),
        ]
    finally:
        srv.stop()


def test_restart_keeps_acked_lsn(tmp_path):
    path = str(tmp_path / "o.dat")
    srv = ServerThread(path).start()
    c = SatClient(srv.url)
    c.auth(client_id="persist")
    c.send(relation(0))
    c.send(oplog(b"p1", insert(0, b"id", b"x", b"")))
    assert c.recv() == frames.ping_resp(b"p1")
    c.close()
    srv.stop()
    srv2 = ServerThread(path).start()
    try:
        c = SatClient(srv2.url)
        assert c.auth(client_id="persist") == frames.server_start_req(b"p1")
    finally:
        srv2.stop()


def test_update_with_old_row_and_unknown_type_tolerance(server, client):
    c = client()
    c.auth()
    c.send(relation(0))
    c.send(oplog(b"u", update(0, [b"id", b"new", b""], [b"id", b"old", b""])))
    assert c.recv() == frames.ping_resp(b"u")
    (tx,) = server.writer.written
    assert tx.changes == [
        UpdatedRecord(
            TABLE.relation,
            {"id": "id", "content": "new", "content_b": ""},
            {"id": "id", "content": "old", "content_b": ""},
        )
    ]


def test_unstorable_transaction_is_refused_not_retried(tmp_path):
    calls = []

    def writer(tx):
        calls.append(tx.lsn)
        raise ValueError("primary key column id is NULL")

    srv = ServerThread(str(tmp_path / "o.dat"), write_fn=writer).start()
    try:
        c = SatClient(srv.url)
        c.auth()
        c.send(relation(0))
        c.send(oplog(b"bad", insert(0, b"id", b"x", b"")))
        c.expect_error_close(frames.INVALID_REQUEST)
        assert calls == [b"bad"]
        assert srv.offsets.get_satellite_lsn("device-id-0000") is None
    finally:
        srv.stop()


def test_client_that_stops_reading_is_cut_off(tmp_path):
    srv = ServerThread(str(tmp_path / "o.dat"), server_kwargs={"send_timeout": 0.5}).start()
    try:
        c = SatClient(srv.url)
        c.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.auth(client_id="slow")
        c.send(pb.SatInStartReplicationReq(lsn=b"0"))
        big = "x" * 65536
        for n in range(300):  # ~20 MB: far beyond socket buffers and the 1 MiB send buffer
            srv.stream.push(
                Transaction([NewRecord(TABLE.relation, {"id": f"i{n}", "content": big})], TS),
                (n, n),
            )
        # The client reads nothing; the server must drop it rather than hang or grow.
        wait_until(lambda: srv.status()["clients_connected"] == 0, 10.0, step=0.01)
        assert_still_serving(srv)
    finally:
        srv.stop()


def test_table_learned_shortly_after_the_write_arrives(tmp_path):
    """Right after start-up the registry may not know a table yet: the write waits."""
    from electric.changes import Column, Table

    late = Table("public", "late", 20001, (Column("id", "text"),), ("id",))
    tables = {TABLE.relation: TABLE}
    srv = ServerThread(
        str(tmp_path / "o.dat"), tables=tables, server_kwargs={"table_wait": 5.0}
    ).start()
    try:
        c = SatClient(srv.url)
        c.auth()
        c.send(
            pb.SatRelation(
                schema_name="public",
                table_name="late",
                relation_id=3,
                columns=[pb.SatRelationColumn(name="id", type="text")],
            )
        )
        c.send(oplog(b"l1", insert(3, b"k")))
        c.assert_silent(0.3)
        tables[late.relation] = late  # the connector describes it
        assert c.recv() == frames.ping_resp(b"l1")
        assert srv.writer.written[0].changes[0].relation == ("public", "late")
    finally:
        srv.stop()


def test_resumed_stream_is_held_until_the_registry_knows_the_table(tmp_path):
    """The chaos flake ("chaos-sat-1 ... 1 extra"): right after Electric restarts, a client
    resumes from its offset before the connectors have described their tables. The delete it
    had not received yet used to go out as an empty transaction (change skipped with a
    warning) whose lsn the client then stored: the row stayed in its view for good. Now the
    stream is held at that transaction (reported in the status) until the table is known."""
    from electric.changes import DeletedRecord

    tables: dict = {}  # a registry that has not heard from any connector yet
    srv = ServerThread(str(tmp_path / "o.dat"), tables=tables,
                       server_kwargs={"table_wait": 0.2}).start()
    try:
        srv.stream.push(tx_insert(1), (1, 1))
        srv.stream.push(Transaction([DeletedRecord(TABLE.relation, {"id": "id-1"})], TS), (2, 2))
        c = SatClient(srv.url)
        c.auth()
        c.send(pb.SatInStartReplicationReq(lsn=encode_offset((1, 1))))  # it saw the insert
        c.recv_until(pb.SatInStartReplicationResp)
        wait_until(lambda: srv.status()["streams_held"], 5.0, step=0.01)
        held = srv.status()["streams_held"]
        assert [(h["tables"], h["offset"]) for h in held] == [("public.entries", "[2, 2]")]
        tables[TABLE.relation] = TABLE  # the connector describes it
        log, before = c.recv_until(pb.SatOpLog)
        assert not any(isinstance(m, pb.SatOpLog) for m in before)
        assert log.ops[0].begin.lsn == encode_offset((2, 2))
        assert [op.WhichOneof("op") for op in log.ops] == ["begin", "delete", "commit"]
        assert list(log.ops[1].delete.old_row_data)[0] == b"id-1"
        wait_until(lambda: srv.status()["streams_held"] == [], 5.0, step=0.01)
        c.close()
    finally:
        srv.stop()
