"""Request handling of the embedded Vaxine's Antidote API (electric/vaxine/embedded/api.py),
message in, message out: real protobuf requests against a real embedded Store on a tmp dir,
no socket. What each reply must be is written in the module's docstring."""

from __future__ import annotations

import pytest

from electric.pb import antidote_pb2 as pb
from electric.vaxine import antidote as a
from electric.vaxine import etf
from electric.vaxine.embedded.api import ABORTED, ApiSession
from electric.vaxine.embedded.store import Store

REG = a.bound_object(b"reg", pb.LWWREG)
FLAG = a.bound_object(b"flag", pb.FLAG_DW)
ROW = a.bound_object(b"rows:1", pb.RRMAP)


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path))
    yield s
    s.close()


@pytest.fixture
def session(store):
    s = ApiSession(store)
    yield s
    s.close()


def start(session: ApiSession) -> bytes:
    resp = session.handle(a.start_transaction())
    assert isinstance(resp, pb.ApbStartTransactionResp) and resp.success
    return resp.transaction_descriptor


def update(session: ApiSession, descriptor: bytes, *ops: pb.ApbUpdateOp) -> pb.ApbOperationResp:
    return session.handle(a.update_objects(descriptor, list(ops)))


def read(session: ApiSession, descriptor: bytes, *objects: pb.ApbBoundObject):
    return session.handle(a.read_objects(descriptor, list(objects)))


def commit(session: ApiSession, descriptor: bytes) -> pb.ApbCommitResp:
    return session.handle(a.commit_transaction(descriptor))


def read_committed(session: ApiSession, *objects: pb.ApbBoundObject) -> list:
    resp = session.handle(a.static_read(list(objects)))
    assert isinstance(resp, pb.ApbStaticReadObjectsResp) and resp.objects.success
    return list(resp.objects.objects)


def error_text(resp) -> str:
    assert isinstance(resp, pb.ApbErrorResp), resp
    assert resp.errcode == 0
    return resp.errmsg.decode()


# -- transactions ----------------------------------------------------------------------


def test_start_gives_a_descriptor_that_is_an_erlang_term(session, store):
    descriptor = start(session)
    etf.decode(descriptor)  # raises if not a term
    assert store.active_count() == 1
    assert start(session) != descriptor
    assert store.active_count() == 2


def test_a_transaction_reads_its_own_writes_and_commits_them(session, store):
    t = start(session)
    assert update(session, t, a.update_op(REG, a.reg_assign(b"v1"))) == pb.ApbOperationResp(
        success=True)
    seen = read(session, t, REG)
    assert seen.success and seen.objects[0].reg.value == b"v1"
    assert read_committed(session, REG)[0].reg.value == b""  # not yet visible to others

    resp = commit(session, t)
    assert isinstance(resp, pb.ApbCommitResp) and resp.success
    # the commit time is a vector clock {dc => µs} of this store
    [(dc, micros)] = etf.decode(resp.commit_time).items()
    assert dc == store.dc_id and micros > 0
    assert read_committed(session, REG)[0].reg.value == b"v1"
    assert store.active_count() == 0


def test_a_commit_without_writes_succeeds(session, store):
    assert commit(session, start(session)).success
    assert store.active_count() == 0


def test_abort_drops_the_writes_and_ends_the_transaction(session, store):
    t = start(session)
    update(session, t, a.update_op(REG, a.reg_assign(b"gone")))
    assert session.handle(a.abort_transaction(t)) == pb.ApbOperationResp(success=True)
    assert store.active_count() == 0
    assert read_committed(session, REG)[0].reg.value == b""
    # the transaction is now unknown: the typed replies say "aborted"
    assert update(session, t, a.update_op(REG, a.reg_assign(b"x"))) == pb.ApbOperationResp(
        success=False, errorcode=ABORTED)
    assert read(session, t, REG) == pb.ApbReadObjectsResp(success=False, errorcode=ABORTED)
    assert commit(session, t) == pb.ApbCommitResp(success=False, errorcode=ABORTED)
    # aborting twice is fine
    assert session.handle(a.abort_transaction(t)) == pb.ApbOperationResp(success=True)


def test_a_committed_transaction_cannot_be_committed_again(session):
    t = start(session)
    update(session, t, a.update_op(REG, a.reg_assign(b"once")))
    assert commit(session, t).success
    assert commit(session, t) == pb.ApbCommitResp(success=False, errorcode=ABORTED)


def test_a_closed_connections_transactions_are_aborted(store):
    owner, other = ApiSession(store), ApiSession(store)
    t = start(owner)
    update(owner, t, a.update_op(REG, a.reg_assign(b"lost")))
    kept = start(other)
    owner.close()
    assert store.active_count() == 1  # only the other connection's
    assert commit(other, t) == pb.ApbCommitResp(success=False, errorcode=ABORTED)
    assert commit(other, kept).success
    assert read_committed(other, REG)[0].reg.value == b""
    other.close()


# -- data types --------------------------------------------------------------------------


def test_a_map_row_with_nested_register_and_flag_reads_back_sorted(session):
    t = start(session)
    row = a.map_update([
        (b"title", pb.LWWREG, a.reg_assign(b"hello")),
        (b"deleted?", pb.FLAG_DW, a.flag_set(False)),
        (b"id", pb.LWWREG, a.reg_assign(b"1")),
    ])
    assert update(session, t, a.update_op(ROW, row)).success
    assert commit(session, t).success
    [obj] = read_committed(session, ROW)
    entries = [(e.key.key, e.key.type) for e in obj.map.entries]
    assert entries == [(b"deleted?", pb.FLAG_DW), (b"id", pb.LWWREG), (b"title", pb.LWWREG)]
    values = {e.key.key: e.value for e in obj.map.entries}
    assert values[b"title"].reg.value == b"hello" and values[b"id"].reg.value == b"1"
    assert values[b"deleted?"].flag.value is False


def test_a_removed_map_key_goes_unless_it_is_a_register(session):
    """Antidote's recursive-reset map: removing a field resets it and drops it when that
    leaves nothing; LWW registers have no reset, so a removed register field stays."""
    row = a.map_update([(b"f", pb.FLAG_DW, a.flag_set(True)),
                        (b"r", pb.LWWREG, a.reg_assign(b"2"))])
    assert session.handle(a.static_update([a.update_op(ROW, row)])).success
    drop = a.map_update([], removed=[(b"f", pb.FLAG_DW), (b"r", pb.LWWREG)])
    assert session.handle(a.static_update([a.update_op(ROW, drop)])).success
    assert [e.key.key for e in read_committed(session, ROW)[0].map.entries] == [b"r"]


def test_a_map_reset_drops_what_can_be_reset(session):
    row = a.map_update([(b"f", pb.FLAG_DW, a.flag_set(True))])
    assert session.handle(a.static_update([a.update_op(ROW, row)])).success
    reset = pb.ApbUpdateOperation(resetop=pb.ApbCrdtReset())
    assert session.handle(a.static_update([a.update_op(ROW, reset)])).success
    assert list(read_committed(session, ROW)[0].map.entries) == []


def test_a_flag_enables_and_disables(session):
    assert session.handle(a.static_update([a.update_op(FLAG, a.flag_set(True))])).success
    assert read_committed(session, FLAG)[0].flag.value is True
    assert session.handle(a.static_update([a.update_op(FLAG, a.flag_set(False))])).success
    assert read_committed(session, FLAG)[0].flag.value is False


def test_static_update_and_read_leave_no_transaction_running(session, store):
    resp = session.handle(a.static_update([a.update_op(REG, a.reg_assign(b"s"))]))
    assert isinstance(resp, pb.ApbCommitResp) and resp.success
    static = session.handle(a.static_read([REG]))
    assert static.objects.objects[0].reg.value == b"s"
    assert static.committime.success
    [(dc, _micros)] = etf.decode(static.committime.commit_time).items()
    assert dc == store.dc_id
    assert store.active_count() == 0


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("ctype, name", [(pb.COUNTER, "COUNTER"), (pb.ORSET, "ORSET"),
                                         (pb.MVREG, "MVREG")])
def test_an_update_of_a_refused_type_aborts_the_transaction(session, store, ctype, name):
    t = start(session)
    update(session, t, a.update_op(REG, a.reg_assign(b"before")))
    op = a.update_op(a.bound_object(b"c", ctype), pb.ApbUpdateOperation(
        counterop=pb.ApbCounterUpdate(inc=1)))
    assert update(session, t, op) == pb.ApbOperationResp(success=False, errorcode=0)
    assert store.active_count() == 0
    assert commit(session, t) == pb.ApbCommitResp(success=False, errorcode=ABORTED)
    assert read_committed(session, REG)[0].reg.value == b""


def test_a_refused_type_nested_in_a_map_is_refused(session):
    row = a.map_update([(b"n", pb.COUNTER, pb.ApbUpdateOperation(
        counterop=pb.ApbCounterUpdate(inc=1)))])
    resp = session.handle(a.static_update([a.update_op(ROW, row)]))
    assert resp == pb.ApbCommitResp(success=False, errorcode=0)
    assert list(read_committed(session, ROW)[0].map.entries) == []


def test_an_operation_of_another_type_is_refused(session, store):
    t = start(session)
    assert update(session, t, a.update_op(REG, a.flag_set(True))) == pb.ApbOperationResp(
        success=False, errorcode=0)
    assert store.active_count() == 0


def test_a_static_update_refused_halfway_writes_nothing(session):
    ops = [a.update_op(REG, a.reg_assign(b"first")),
           a.update_op(a.bound_object(b"s", pb.ORSET), a.reg_assign(b"x"))]
    assert session.handle(a.static_update(ops)) == pb.ApbCommitResp(success=False, errorcode=0)
    assert read_committed(session, REG)[0].reg.value == b""


def test_a_read_of_a_refused_type_is_an_error_reply_naming_it(session):
    text = error_text(read(session, start(session), a.bound_object(b"c", pb.COUNTER)))
    assert text.startswith("error: ") and "COUNTER" in text


def test_a_read_as_another_type_than_written_is_an_error_reply(session):
    assert session.handle(a.static_update([a.update_op(REG, a.reg_assign(b"v"))])).success
    text = error_text(session.handle(a.static_read([a.bound_object(b"reg", pb.RRMAP)])))
    assert "antidote_crdt_register_lww" in text and "antidote_crdt_map_rr" in text


@pytest.mark.parametrize("request_of", [
    lambda d: a.update_objects(d, [a.update_op(REG, a.reg_assign(b"x"))]),
    lambda d: a.read_objects(d, [REG]),
    a.commit_transaction,
    a.abort_transaction,
])
def test_a_descriptor_that_is_not_an_erlang_term_is_badarg(session, request_of):
    text = error_text(session.handle(request_of(b"\x83garbage")))
    assert text.startswith("error: badarg\n")


@pytest.mark.parametrize("request_of", [
    a.start_transaction,
    lambda ts: a.static_update([a.update_op(REG, a.reg_assign(b"x"))], ts),
    lambda ts: a.static_read([REG], ts),
])
def test_a_timestamp_that_is_not_an_erlang_term_is_badarg(session, store, request_of):
    text = error_text(session.handle(request_of(b"not a term")))
    assert text == "error: badarg\ntimestamp is not an Erlang term"
    assert store.active_count() == 0


@pytest.mark.parametrize("timestamp", [None, a.IGNORE, etf.encode({b"dc": 1})])
def test_absent_ignore_or_a_clock_timestamp_are_accepted(session, timestamp):
    assert session.handle(a.start_transaction(timestamp)).success


def test_a_request_without_a_handler_is_function_clause(session):
    text = error_text(session.handle(pb.ApbGetConnectionDescriptor()))
    assert text == "error: function_clause\nno handler for ApbGetConnectionDescriptor"


def test_a_closed_store_is_an_error_reply_not_a_traceback(store, session):
    store.close()
    assert error_text(session.handle(a.start_transaction())) == "error: the store is closed"
