"""The session rules of docs/protocols.md §1.3 and malformed input, driven without sockets."""

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from electric import metrics
from electric.changes import (
    Column,
    DeletedRecord,
    NewRecord,
    Table,
    Transaction,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.limits import DEFAULT
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.satellite.actions import (
    AwaitTables,
    ClaimClient,
    Close,
    Send,
    StartOutgoing,
    StopOutgoing,
    WriteTransaction,
)
from electric.satellite.auth import AuthError
from electric.satellite.lsn import encode_offset
from electric.satellite.oplog_cache import OplogCache
from electric.satellite.outgoing import HeldTransaction
from electric.satellite.session import InStatus, Session

CLUSTER = "electric-development-cluster-0000"
TABLE = Table(
    schema="fake_schema",
    name="sqlite_server_test",
    oid=100001,
    columns=(Column("id", "uuid"), Column("content", "varchar")),
    primary_keys=("id",),
)
OTHER = Table(
    schema="public",
    name="entries",
    oid=100002,
    columns=(Column("id", "uuid"), Column("content", "text"), Column("content_b", "text")),
    primary_keys=("id",),
)
TABLES = {TABLE.relation: TABLE, OTHER.relation: OTHER}
TS = datetime(2022, 11, 23, 10, 40, tzinfo=UTC)
TS_MS = 1669200000000


def authenticate(token: str) -> str:
    if token in ("", "invalid_token"):
        raise AuthError("invalid token")
    if token == "expired":
        raise AuthError("token expired", expired=True)
    return "user-" + token


def new_session(tables=None) -> Session:
    return Session(authenticate, (tables or TABLES).get, CLUSTER, now=0.0, peer="127.0.0.1:1")


def sent(actions):
    return [a.msg for a in actions if isinstance(a, Send)]


def frames_of(actions):
    return [a.data for a in actions if isinstance(a, Send)]


def error_then_close(actions, code):
    sends = [a for a in actions if isinstance(a, Send)]
    assert sends[-1].msg == frames.error(code), actions
    assert isinstance(actions[-1], Close) and actions[-1].code is None
    return True


def rx(session, msg, now=1.0):
    return session.receive(frames.encode(msg), now)


def authed(stored_lsn=None, client_id="device-id-0000", tables=None) -> Session:
    s = new_session(tables)
    actions = rx(s, pb.SatAuthReq(id=client_id, token="t"))
    assert actions == [ClaimClient(client_id, "user-t")]
    actions = s.client_claimed(stored_lsn)
    assert frames_of(actions) == [
        frames.encode(pb.SatAuthResp(id=CLUSTER)),
        frames.encode(frames.server_start_req(stored_lsn or b"")),
    ]
    return s


def incoming_active(**kw) -> Session:
    s = authed(**kw)
    assert rx(s, pb.SatInStartReplicationResp()) == []
    assert s.inc.status == InStatus.ACTIVE
    return s


# -- before authentication ------------------------------------------------------------------


def test_auth_success_reply_bytes():
    s = authed()
    assert s.authenticated and s.client_id == "device-id-0000" and s.user_id == "user-t"


def test_auth_with_stored_lsn():
    s = new_session()
    rx(s, pb.SatAuthReq(id="c", token="t"))
    assert frames_of(s.client_claimed(b"x"))[1] == bytes.fromhex("07 0a 01 78 12 01 02 18 01")


@pytest.mark.parametrize("req", [pb.SatAuthReq(id="", token="t"), pb.SatAuthReq(id="c")])
def test_auth_missing_fields(req):
    assert error_then_close(rx(new_session(), req), frames.INVALID_REQUEST)


@pytest.mark.parametrize("token", ["invalid_token", "expired"])
def test_auth_bad_token(token):
    s = new_session()
    assert error_then_close(rx(s, pb.SatAuthReq(id="c", token=token)), frames.AUTH_REQUIRED)
    assert s.closed and s.client_id is None


@pytest.mark.parametrize(
    "msg",
    [
        pb.SatPingReq(),
        pb.SatPingResp(),
        pb.SatErrorResp(),
        pb.SatInStartReplicationReq(lsn=b"eof"),
        pb.SatOpLog(),
        pb.SatRelation(),
        pb.SatAuthResp(id="x"),
    ],
)
def test_anything_before_auth_is_auth_required(msg):
    actions = rx(new_session(), msg)
    assert frames_of(actions)[0] == bytes.fromhex("000801")
    assert error_then_close(actions, frames.AUTH_REQUIRED)


def test_duplicate_client_id():
    s = new_session()
    rx(s, pb.SatAuthReq(id="c", token="t"))
    assert error_then_close(s.client_claim_failed(), frames.INVALID_REQUEST)
    assert not s.authenticated


def test_message_while_claim_pending_is_refused():
    s = new_session()
    rx(s, pb.SatAuthReq(id="c", token="t"))
    assert error_then_close(rx(s, pb.SatPingReq()), frames.AUTH_REQUIRED)
    assert s.client_claimed(None) == []


# -- malformed frames (M1-M4) ---------------------------------------------------------------


@pytest.mark.parametrize("authenticated", [False, True])
@pytest.mark.parametrize(
    "data",
    [b"", b"rubbish", bytes([13]), bytes([200, 1, 2]), bytes.fromhex("01 0a ff")],
)
def test_undecodable_frames(authenticated, data):
    s = authed() if authenticated else new_session()
    actions = s.receive(data, 1.0)
    assert frames_of(actions)[-1] == b"\x00"
    assert error_then_close(actions, frames.INTERNAL)
    assert s.receive(frames.encode(pb.SatPingReq()), 2.0) == []  # closed: input ignored


def test_text_frame():
    s = authed()
    actions = s.receive_text("hello", 1.0)
    assert sent(actions) == [frames.error(frames.INVALID_REQUEST)]
    assert actions[-1] == Close(1003, "binary frames only")


def test_undecodable_frame_stops_outgoing_stream():
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    actions = s.receive(b"\xff", 2.0)
    assert actions[0] == StopOutgoing(sub)


# -- after authentication ---------------------------------------------------------------------


def test_ping_answered_with_present_empty_lsn():
    assert frames_of(rx(authed(), pb.SatPingReq())) == [bytes.fromhex("060a00")]


@pytest.mark.parametrize("resp", ["060a00", "06", "060a0131"])
def test_ping_resp_accepted(resp):
    s = authed()
    assert s.receive(bytes.fromhex(resp), 1.0) == []
    assert not s.closed


@pytest.mark.parametrize(
    "msg",
    [
        pb.SatAuthReq(id="c", token="t"),
        pb.SatAuthResp(),
        pb.SatGetServerInfoReq(),
        pb.SatGetServerInfoResp(),
    ],
)
def test_unexpected_types_after_auth(msg):
    assert error_then_close(rx(authed(), msg), frames.INVALID_REQUEST)


def test_client_error_closes_without_error_frame():
    s = authed()
    actions = rx(s, pb.SatErrorResp(error_type=frames.REPLICATION_FAILED))
    assert sent(actions) == [] and isinstance(actions[-1], Close)


# -- outgoing start / stop ------------------------------------------------------------------


@pytest.mark.parametrize(
    "req, offset",
    [
        (pb.SatInStartReplicationReq(lsn=b"eof"), "eof"),
        (pb.SatInStartReplicationReq(lsn=b"0"), 0),
        (pb.SatInStartReplicationReq(lsn=encode_offset((5159, 9941))), (5159, 9941)),
        (pb.SatInStartReplicationReq(lsn=b"", options=[frames.OPT_FIRST_LSN]), 0),
        (pb.SatInStartReplicationReq(lsn=b"\0\0\0\0", options=[frames.OPT_FIRST_LSN]), 0),
        (pb.SatInStartReplicationReq(lsn=b"junk", options=[frames.OPT_LAST_LSN]), "eof"),
        (
            pb.SatInStartReplicationReq(
                lsn=b"0", options=[frames.OPT_SYNC_MODE], sync_batch_size=5
            ),
            0,
        ),
    ],
)
def test_start_offsets(req, offset):
    s = authed()
    actions = rx(s, req)
    assert isinstance(actions[0], StartOutgoing) and actions[0].offset == offset
    assert sent(actions) == [pb.SatInStartReplicationResp()]
    assert s.out.active


@pytest.mark.parametrize(
    "req",
    [
        pb.SatInStartReplicationReq(lsn=b""),
        pb.SatInStartReplicationReq(lsn=b"\0\0\0\0"),  # typescript-client 0.3.0 default
        pb.SatInStartReplicationReq(lsn=bytes.fromhex("83680262000026d56200001427")),
        pb.SatInStartReplicationReq(lsn=b"0", options=[frames.OPT_SYNC_MODE]),
        pb.SatInStartReplicationReq(lsn=b"0", options=[frames.OPT_SYNC_MODE], sync_batch_size=-1),
    ],
)
def test_start_invalid(req):
    s = authed()
    assert error_then_close(rx(s, req), frames.INVALID_REQUEST)
    assert not s.out.active


def test_stop_when_not_active():
    assert error_then_close(rx(authed(), pb.SatInStopReplicationReq()), frames.INVALID_REQUEST)


def test_stop_then_restart_no_stray_error_and_relations_reannounced():
    s = authed()
    sub1 = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    tx = Transaction([UpdatedRecord(TABLE.relation, {"id": "a", "content": "x"})], TS)
    first = s.vaxine_transaction(sub1, tx, (1, 2))
    assert [type(m).__name__ for m in sent(first)] == ["SatRelation", "SatOpLog"]
    assert [type(m).__name__ for m in sent(s.vaxine_transaction(sub1, tx, (3, 4)))] == ["SatOpLog"]
    actions = rx(s, pb.SatInStopReplicationReq())
    assert actions == [StopOutgoing(sub1), Send(pb.SatInStopReplicationResp())]
    assert s.vaxine_transaction(sub1, tx, (5, 6)) == []  # stale subscription dropped
    actions = rx(s, pb.SatInStartReplicationReq(lsn=encode_offset((3, 4))))
    sub2 = actions[0].subscription
    assert sub2 != sub1 and actions[0].offset == (3, 4)
    again = s.vaxine_transaction(sub2, tx, (5, 6))
    assert [type(m).__name__ for m in sent(again)] == ["SatRelation", "SatOpLog"]


def test_a_big_transaction_goes_out_as_several_oplogs_built_one_at_a_time(monkeypatch):
    STREAMED_PIECE = DEFAULT.satellite.streamed_piece
    STREAMED_TRANSACTION = DEFAULT.satellite.streamed_transaction

    tables = dict(TABLES)
    s = authed(tables=tables)
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    n = STREAMED_TRANSACTION + 1
    produced = []
    late = Table("nowhere", "unknown", 100003, (Column("id", "text"),), ("id",))

    class Changes:  # what a big logged transaction carries: read lazily, counted up front
        def __len__(self):
            return n + 1

        def __iter__(self):
            for i in range(n):
                produced.append(i)
                table = TABLE if i % 2 else OTHER
                yield UpdatedRecord(table.relation, {"id": str(i), "content": "x"})
            yield UpdatedRecord(("nowhere", "unknown"), {"id": "z"})

    actions = iter(s.vaxine_transaction(sub, Transaction(Changes(), TS), (9, 9)))
    first = next(actions)
    assert isinstance(first, Send) and len(produced) <= 2  # nothing built ahead of sending
    msgs = [first.msg]
    for action in actions:  # up to the change to a table the registry does not know yet
        if isinstance(action, AwaitTables):
            break
        msgs.append(action.msg)
    assert action == AwaitTables(sub, ("nowhere.unknown",)) and len(produced) == n
    assert next(actions) == AwaitTables(sub, ("nowhere.unknown",))  # still unknown: waits
    tables[late.relation] = late
    msgs += sent(actions)
    relations = [m for m in msgs if isinstance(m, pb.SatRelation)]
    oplogs = [m for m in msgs if isinstance(m, pb.SatOpLog)]
    assert sorted(r.table_name for r in relations) == ["entries", "sqlite_server_test", "unknown"]
    assert len(oplogs) > 1 and all(len(m.ops) <= STREAMED_PIECE + 1 for m in oplogs)
    ops = [op for m in oplogs for op in m.ops]
    assert ops[0].HasField("begin") and ops[-1].HasField("commit")
    assert not any(op.HasField("begin") or op.HasField("commit") for op in ops[1:-1])
    assert ops[0].begin.lsn == ops[-1].commit.lsn == encode_offset((9, 9))
    assert len(ops) == n + 3  # every change, the one that waited for its table too
    # every relation is announced before the first message that uses it
    seen: set[int] = set()
    for m in msgs:
        if isinstance(m, pb.SatRelation):
            seen.add(m.relation_id)
        else:
            used = {op.update.relation_id for op in m.ops if op.HasField("update")}
            assert used <= seen


def test_second_start_restarts_cleanly():
    s = authed()
    sub1 = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    actions = rx(s, pb.SatInStartReplicationReq(lsn=b"0"))
    assert actions[0] == StopOutgoing(sub1)
    assert isinstance(actions[1], StartOutgoing) and actions[1].offset == 0
    assert sent(actions) == [pb.SatInStartReplicationResp()]


def test_outgoing_failure_resets_and_allows_new_start():
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    actions = s.outgoing_failed(sub, "stream broke")
    assert actions[0] == StopOutgoing(sub)
    assert sent(actions) == [frames.error(frames.REPLICATION_FAILED)]
    assert not s.closed and not s.out.active
    assert isinstance(rx(s, pb.SatInStartReplicationReq(lsn=b"0"))[0], StartOutgoing)


def test_o1_eleven_transactions_one_relation():
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    out = []
    for n in range(11):
        tx = Transaction([NewRecord(TABLE.relation, {"id": "fakeid", "content": "a"})], TS)
        out += sent(s.vaxine_transaction(sub, tx, n))
    assert isinstance(out[0], pb.SatRelation)
    assert out[0] == pb.SatRelation(
        schema_name="fake_schema",
        table_name="sqlite_server_test",
        relation_id=100001,
        columns=[
            pb.SatRelationColumn(name="id", type="uuid"),
            pb.SatRelationColumn(name="content", type="varchar"),
        ],
    )
    oplogs = out[1:]
    assert len(oplogs) == 11
    for n, log in enumerate(oplogs):
        begin, insert, commit = log.ops
        assert begin.begin.lsn == bytes([0x83, 0x61, n]) == commit.commit.lsn
        assert begin.begin.commit_timestamp == TS_MS
        assert insert.insert == pb.SatOpInsert(relation_id=100001, row_data=[b"fakeid", b"a"])


def test_outgoing_vector_bytes():
    """A SatOpLog's bytes (docs/protocols.md §1.2), produced from a Transaction."""
    uuid = "911fee88-2a0f-4fff-9d71-0c3eb7c9a380"
    table = Table(
        "public", "entries", 100001, (Column("id", "uuid"), Column("content", "varchar")), ("id",)
    )
    s = authed(tables={table.relation: table})
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    tx = Transaction([UpdatedRecord(table.relation, {"id": uuid, "content": "hello"})], TS)
    data = [a.data for a in s.vaxine_transaction(sub, tx, (5159, 9941)) if isinstance(a, Send)]
    assert data[0] == bytes.fromhex(
        "0c0a067075626c69631a07656e747269657320a18d062a0a0a026964120475756964"
        "2a120a07636f6e74656e74120776617263686172"
    )
    assert data[1] == (
        bytes.fromhex("0b0a180a160880e8caa0ca301a0d836802620000142762000026d50a331a3108a18d061224")
        + uuid.encode()
        + bytes.fromhex("120568656c6c6f0a1812160880e8caa0ca301a0d836802620000142762000026d5")
    )


def test_outgoing_row_encoding_nulls_deletes_and_truncate():
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"0"))[0].subscription
    tx = Transaction(
        [
            UpdatedRecord(
                OTHER.relation,
                {"id": "1", "content": None},
                {"id": "1", "content": "old", "content_b": "b"},
            ),
            DeletedRecord(TABLE.relation, {"id": "2", "content": "z"}),
            TruncatedRelation(TABLE.relation),
        ],
        TS,
    )
    msgs = sent(s.vaxine_transaction(sub, tx, (7, 8)))
    assert [type(m).__name__ for m in msgs] == ["SatRelation", "SatRelation", "SatOpLog"]
    ops = msgs[-1].ops
    assert [op.WhichOneof("op") for op in ops] == ["begin", "update", "delete", "commit"]
    assert list(ops[1].update.row_data) == [b"1", b"", b""]
    assert list(ops[1].update.old_row_data) == [b"1", b"old", b"b"]
    assert list(ops[2].delete.old_row_data) == [b"2", b"z"]


def test_empty_outgoing_transaction_still_begin_commit():
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"0"))[0].subscription
    (log,) = sent(s.vaxine_transaction(sub, Transaction([], TS), (1, 1)))
    assert [op.WhichOneof("op") for op in log.ops] == ["begin", "commit"]


def test_events_without_start_are_dropped():
    s = authed()
    assert s.vaxine_transaction(1, Transaction([], TS), (1, 1)) == []


# -- incoming ---------------------------------------------------------------------------------


def relation_msg(
    rel_id=100004, schema="fake_schema", table="sqlite_server_test", cols=("id", "content")
):
    return pb.SatRelation(
        schema_name=schema,
        table_name=table,
        relation_id=rel_id,
        columns=[pb.SatRelationColumn(name=c, type="text") for c in cols],
    )


def op_begin(lsn=b"some_long_internal_lsn", ts=TS_MS):
    return pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=lsn))


def op_insert(values, rel=100004):
    return pb.SatTransOp(insert=pb.SatOpInsert(relation_id=rel, row_data=values))


def op_commit():
    return pb.SatTransOp(commit=pb.SatOpCommit())


def test_i1_transaction_split_over_two_oplogs_then_ack():
    s = incoming_active()
    assert rx(s, relation_msg()) == []
    assert rx(s, pb.SatOpLog(ops=[op_begin(), op_insert([b"a", b"b"])])) == []
    actions = rx(s, pb.SatOpLog(ops=[op_insert([b"c", b"d"]), op_commit()]))
    (write,) = actions
    tx = write.transaction
    assert isinstance(write, WriteTransaction)
    assert tx.lsn == b"some_long_internal_lsn" and tx.origin == "device-id-0000"
    assert tx.publication == "" and tx.commit_timestamp == TS
    assert tx.changes == [
        NewRecord(TABLE.relation, {"id": "a", "content": "b"}),
        NewRecord(TABLE.relation, {"id": "c", "content": "d"}),
    ]
    assert frames_of(s.transaction_written(tx.lsn)) == [
        bytes.fromhex("060a16") + b"some_long_internal_lsn"
    ]
    assert s.inc.in_flight == []


def test_many_transactions_in_one_oplog_never_stall():
    s = incoming_active()
    rx(s, relation_msg())
    ops = []
    for n in range(200):
        ops += [op_begin(str(n).encode()), op_insert([str(n).encode(), b"x"]), op_commit()]
    actions = rx(s, pb.SatOpLog(ops=ops))
    assert len(actions) == 200 and all(isinstance(a, WriteTransaction) for a in actions)
    assert [a.transaction.lsn for a in actions] == [str(n).encode() for n in range(200)]


def test_update_delete_and_empty_transaction():
    s = incoming_active()
    rx(
        s,
        relation_msg(
            rel_id=0, schema="public", table="entries", cols=("id", "content", "content_b")
        ),
    )
    ops = [
        op_begin(b"1"),
        pb.SatTransOp(update=pb.SatOpUpdate(relation_id=0, row_data=[b"u", b"How are you?", b""])),
        pb.SatTransOp(
            delete=pb.SatOpDelete(relation_id=0, old_row_data=[b"u", b"x", b"", b"extra"])
        ),
        op_commit(),
        op_begin(b"2"),
        op_commit(),
    ]
    a1, a2 = rx(s, pb.SatOpLog(ops=ops))
    assert a1.transaction.changes == [
        UpdatedRecord(
            OTHER.relation, {"id": "u", "content": "How are you?", "content_b": ""}, None
        ),
        DeletedRecord(OTHER.relation, {"id": "u", "content": "x", "content_b": ""}),
    ]
    assert a2.transaction.changes == [] and a2.transaction.lsn == b"2"


def test_an_update_keeps_its_old_row_only_when_it_has_every_column():
    s = incoming_active()
    rx(s, relation_msg(rel_id=0, schema="public", table="entries",
                       cols=("id", "content", "content_b")))

    def update(old):
        op = pb.SatTransOp(update=pb.SatOpUpdate(relation_id=0, row_data=[b"u", b"x", b"y"],
                                                 old_row_data=old))
        (action,) = rx(s, pb.SatOpLog(ops=[op_begin(b"1"), op, op_commit()]))
        return action.transaction.changes[0].old_record

    # whole: per-column merge may compare with it
    assert update([b"u", b"x0", b"y"]) == {"id": "u", "content": "x0", "content_b": "y"}
    # a NULL left out shifts the rest: not trusted, the update writes every column
    assert update([b"u", b"y"]) is None


def test_oplog_ignored_when_incoming_not_active():
    s = authed()  # REQUESTED, client has not answered
    rx(s, relation_msg())
    assert rx(s, pb.SatOpLog(ops=[op_begin(), op_insert([b"a", b"b"]), op_commit()])) == []
    assert not s.closed


@pytest.mark.parametrize(
    "ops",
    [
        [op_insert([b"a", b"b"])],  # op before begin
        [op_commit()],  # commit without begin
        [op_begin(), op_begin()],  # begin inside a transaction
        [op_begin(), op_insert([b"a", b"b"], rel=999)],  # unknown relation
        [op_begin(lsn=b"")],  # empty lsn
        [op_begin(), op_insert([])],  # empty row_data
        [op_begin(), pb.SatTransOp(update=pb.SatOpUpdate(relation_id=100004))],
        [op_begin(ts=2**63)],  # not a valid timestamp
        [op_begin(), pb.SatTransOp()],  # empty op
        [op_begin(), op_insert([b"\xff\xfe", b"b"])],  # not UTF-8 text
        # semantically bad: primary key missing (M15)
        [op_begin(), op_insert([b"only-content"], rel=6), op_commit()],
        [op_begin(), pb.SatTransOp(delete=pb.SatOpDelete(relation_id=100004)), op_commit()],
    ],
)
def test_oplog_violations(ops):
    s = incoming_active()
    rx(s, relation_msg())
    rx(s, relation_msg(rel_id=5, schema="public", table="not_replicated", cols=("id",)))
    rx(s, relation_msg(rel_id=6, cols=("content",)))
    actions = rx(s, pb.SatOpLog(ops=ops))
    assert error_then_close(actions, frames.INVALID_REQUEST)
    assert not any(isinstance(a, WriteTransaction) for a in actions)


def test_start_resp_in_unexpected_states_ignored():
    s = incoming_active()
    assert rx(s, pb.SatInStartReplicationResp()) == []  # ACTIVE
    assert not s.closed


def test_stop_resp_pauses_and_late_start_resp_gets_stop():
    s = incoming_active()
    assert rx(s, pb.SatInStopReplicationResp()) == []
    assert s.inc.status == InStatus.PAUSED
    assert sent(rx(s, pb.SatInStartReplicationResp())) == [pb.SatInStopReplicationReq()]


def test_writer_failure_stop_then_start_with_stored_lsn():
    s = incoming_active()
    rx(s, relation_msg())
    rx(s, pb.SatOpLog(ops=[op_begin(b"9"), op_insert([b"a", b"b"]), op_commit()]))
    assert sent(s.writer_failed("vaxine down")) == [pb.SatInStopReplicationReq()]
    assert s.inc.status == InStatus.PAUSED and s.inc.in_flight == []
    assert sent(s.writer_restarted(b"8")) == [frames.server_start_req(b"8")]
    # the client's answer to our stop crosses the new start: still REQUESTED
    assert rx(s, pb.SatInStopReplicationResp()) == []
    assert s.inc.status == InStatus.REQUESTED
    rx(s, pb.SatInStartReplicationResp())
    assert s.inc.status == InStatus.ACTIVE


# -- liveness ---------------------------------------------------------------------------------


def test_ping_cycle():
    s = authed()
    rx(s, pb.SatPingReq(), now=1.0)
    assert s.tick(5.0) == []  # 4 s since last message
    assert sent(s.tick(6.5)) == [pb.SatPingReq()]
    actions = s.tick(11.5)
    assert actions == [Close(None, "ping timeout")] and s.closed


def test_any_message_counts_as_life():
    s = authed()
    assert sent(s.tick(6.0)) == [pb.SatPingReq()]
    rx(s, pb.SatRelation(relation_id=1), now=7.0)
    assert s.tick(11.0) == []
    assert sent(s.tick(16.0)) == [pb.SatPingReq()]


def test_unauthenticated_socket_times_out():
    s = new_session()
    assert s.tick(5.0) == []
    assert s.tick(DEFAULT.satellite.auth_timeout) == [Close(None, "authentication timeout")]


def test_connection_lost_stops_stream():
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    assert s.connection_lost() == [StopOutgoing(sub)]
    assert s.status()["outgoing"] == "none"


def test_handler_exception_becomes_internal_error():
    def boom(token):
        raise RuntimeError("bug")

    s = Session(boom, TABLES.get, CLUSTER)
    assert error_then_close(rx(s, pb.SatAuthReq(id="c", token="t")), frames.INTERNAL)


def test_transaction_rejected_by_writer_closes_with_invalid_request():
    s = incoming_active()
    assert error_then_close(s.transaction_rejected(b"1", "bad row"), frames.INVALID_REQUEST)


def test_outgoing_oplog_shared_between_sessions_but_not_across_schema_changes():
    a, b = authed(), authed(client_id="other")
    cache = OplogCache()
    a.oplog_cache = b.oplog_cache = cache
    sub_a = rx(a, pb.SatInStartReplicationReq(lsn=b"0"))[0].subscription
    sub_b = rx(b, pb.SatInStartReplicationReq(lsn=b"0"))[0].subscription
    tx = Transaction([UpdatedRecord(TABLE.relation, {"id": "1", "content": "x"})], TS)
    data_a = [s.data for s in a.vaxine_transaction(sub_a, tx, (40, 41)) if isinstance(s, Send)]
    data_b = [s.data for s in b.vaxine_transaction(sub_b, tx, (40, 41)) if isinstance(s, Send)]
    assert data_a == data_b and len(data_a) == 2  # relation + oplog, same bytes
    wider = Table(
        TABLE.schema,
        TABLE.name,
        TABLE.oid,
        (*TABLE.columns, Column("extra", "text")),
        TABLE.primary_keys,
    )
    c = authed(client_id="third", tables={wider.relation: wider})
    c.oplog_cache = cache
    sub_c = rx(c, pb.SatInStartReplicationReq(lsn=b"0"))[0].subscription
    (_, log) = sent(c.vaxine_transaction(sub_c, tx, (40, 41)))
    assert list(log.ops[1].update.row_data) == [b"1", b"x", b""]


def test_unknown_table_is_left_to_the_writer():
    s = incoming_active()
    rx(s, relation_msg(rel_id=5, schema="public", table="not_yet_known", cols=("id",)))
    (write,) = rx(s, pb.SatOpLog(ops=[op_begin(), op_insert([b"a"], rel=5), op_commit()]))
    assert write.transaction.changes[0].relation == ("public", "not_yet_known")


# -- fuzz: nothing a client sends can raise out of the session ---------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8), st.booleans())
def test_fuzz_frames_never_raise(payloads, authenticate_first):
    s = incoming_active() if authenticate_first else new_session()
    for i, data in enumerate(payloads):
        actions = s.receive(bytes(data), float(i))
        assert all(
            isinstance(
                a, Send | Close | ClaimClient | StartOutgoing | StopOutgoing | WriteTransaction
            )
            for a in actions
        )
        if any(isinstance(a, Close) for a in actions):
            assert s.closed
            assert s.receive(b"\x05", float(i)) == []
            break


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=1, lsn=b"1")),
                pb.SatTransOp(begin=pb.SatOpBegin(lsn=b"")),
                pb.SatTransOp(commit=pb.SatOpCommit()),
                pb.SatTransOp(insert=pb.SatOpInsert(relation_id=100004, row_data=[b"a", b"b"])),
                pb.SatTransOp(insert=pb.SatOpInsert(relation_id=100004)),
                pb.SatTransOp(update=pb.SatOpUpdate(relation_id=100004, row_data=[b"a"])),
                pb.SatTransOp(delete=pb.SatOpDelete(relation_id=100004, old_row_data=[b"a"])),
                pb.SatTransOp(delete=pb.SatOpDelete(relation_id=7, old_row_data=[b"a"])),
            ]
        ),
        max_size=12,
    )
)
def test_fuzz_op_sequences(ops):
    s = incoming_active()
    rx(s, relation_msg())
    actions = rx(s, pb.SatOpLog(ops=ops))
    writes = [a for a in actions if isinstance(a, WriteTransaction)]
    if s.closed:
        assert error_then_close(actions, frames.INVALID_REQUEST)
    for w in writes:
        assert w.transaction.lsn == b"1"


# -- a table the schema registry does not know yet: the stream waits, nothing is skipped ------


def error_lines():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="ERROR")
    return lines, sink


def blocked_gauge() -> float:
    return metrics.log_readers_blocked.labels("satellite")._value.get()


def test_unknown_table_holds_the_stream_then_delivers_everything():
    tables = dict(TABLES)
    s = authed(tables=tables)
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    late = Table("public", "late", 100004, (Column("id", "text"),), ("id",))
    tx = Transaction([NewRecord(TABLE.relation, {"id": "1", "content": "a"}),
                      DeletedRecord(late.relation, {"id": "gone"})], TS)
    lines, sink = error_lines()
    gauge = blocked_gauge()
    try:
        actions = s.vaxine_transaction(sub, tx, (3, 4))
        assert isinstance(actions, HeldTransaction)
        it = iter(actions)
        assert next(it) == AwaitTables(sub, ("public.late",))
        s.tables_awaited(10.0)  # the wait starts
        assert next(it) == AwaitTables(sub, ("public.late",))
        s.tables_awaited(10.0 + DEFAULT.satellite.table_wait / 2)
        assert lines == [] and s.held_at() is None  # connectors may still be describing it
        assert next(it) == AwaitTables(sub, ("public.late",))
        s.tables_awaited(10.0 + DEFAULT.satellite.table_wait)
        s.tables_awaited(10.0 + DEFAULT.satellite.table_wait * 2)
        assert len(lines) == 1  # one ERROR naming the table and the client
        assert "public.late" in lines[0] and "device-id-0000" in lines[0]
        assert "[3, 4]" in lines[0]
        held = s.held_at()
        assert (held.offset, held.tables) == ("[3, 4]", "public.late")
        assert blocked_gauge() == gauge + 1
        assert s.status()["sent_transactions"] == 0
        tables[late.relation] = late  # the connector describes it
        msgs = sent(it)
        assert [type(m).__name__ for m in msgs] == ["SatRelation", "SatRelation", "SatOpLog"]
        ops = msgs[-1].ops
        assert [op.WhichOneof("op") for op in ops] == ["begin", "insert", "delete", "commit"]
        assert list(ops[2].delete.old_row_data) == [b"gone"]
        assert s.held_at() is None and blocked_gauge() == gauge
        assert s.status()["sent_transactions"] == 1
    finally:
        logger.remove(sink)


def test_a_stream_stopped_while_held_sends_nothing_and_is_released():
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"eof"))[0].subscription
    tx = Transaction([NewRecord(("public", "never"), {"id": "1"})], TS)
    gauge = blocked_gauge()
    it = iter(s.vaxine_transaction(sub, tx, (5, 5)))
    assert isinstance(next(it), AwaitTables)
    s.tables_awaited(0.0)
    s.tables_awaited(DEFAULT.satellite.table_wait)
    assert s.held_at() is not None and blocked_gauge() == gauge + 1
    rx(s, pb.SatInStopReplicationReq())
    assert list(it) == []  # the old stream's actions end
    assert s.held_at() is None and blocked_gauge() == gauge


def test_held_actions_produce_nothing_until_taken():
    """The shared tail's direct path drops a HeldTransaction and hands the transaction to
    the socket's greenlet: asking must not change the session."""
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=b"0"))[0].subscription
    tx = Transaction([NewRecord(("public", "never"), {"id": "1"})], TS)
    assert isinstance(s.vaxine_transaction(sub, tx, (5, 5)), HeldTransaction)
    assert s.out.held is None and s.out.empty_client and s.out.sent_transactions == 0


def test_the_resume_position_itself_is_not_sent_again():
    s = authed()
    sub = rx(s, pb.SatInStartReplicationReq(lsn=encode_offset((3, 4))))[0].subscription
    tx = Transaction([UpdatedRecord(TABLE.relation, {"id": "1", "content": "x"})], TS)
    assert list(s.vaxine_transaction(sub, tx, (3, 4))) == []  # a stream starts with it
    assert [type(m).__name__ for m in sent(s.vaxine_transaction(sub, tx, (5, 6)))] == \
        ["SatRelation", "SatOpLog"]
