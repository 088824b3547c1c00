"""A Satellite session with sync rules (docs/sync-rules.md §3, §4), driven without sockets."""

from datetime import UTC, datetime

from electric import metrics
from electric.changes import Column, DeletedRecord, NewRecord, Table, Transaction, UpdatedRecord
from electric.limits import DEFAULT
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.satellite.actions import (
    ClaimClient,
    Close,
    Send,
    WriteTransaction,
)
from electric.satellite.auth import Identity
from electric.satellite.lsn import encode_offset
from electric.satellite.oplog_cache import OplogCache
from electric.satellite.session import FilterUnavailable, Session
from electric.sync_rules import effective_filter, parse

ITEMS = Table(schema="public", name="items", oid=200001,
              columns=(Column("id", "text"), Column("owner_id", "text"), Column("title", "text")),
              primary_keys=("id",))
SECRETS = Table(schema="public", name="secrets", oid=200002,
                columns=(Column("id", "text"), Column("body", "text")), primary_keys=("id",))
TABLES = {ITEMS.relation: ITEMS, SECRETS.relation: SECRETS}
RULES = parse('''
[claims]
sub = "string"

[tables.items]
rows = "owner_id = claims.sub"
''', "rules.toml")
TS = datetime(2022, 11, 23, 10, 40, tzinfo=UTC)


def authenticate(token: str) -> Identity:
    return Identity(token, {"user_id": token, "sub": token})


def session(token: str, cache: OplogCache | None = None, bind=None,
            start: bytes = b"eof") -> Session:
    """An authenticated session streaming (by default live: a client that may hold rows)."""
    cache = cache if cache is not None else OplogCache()

    def bind_filter(claims):
        return cache.intern(effective_filter(RULES, claims))

    s = Session(authenticate, TABLES.get, "cluster", oplog_cache=cache,
                bind_filter=bind or bind_filter)
    assert s.receive(frames.encode(pb.SatAuthReq(id=f"dev-{token}", token=token)), 1.0) == [
        ClaimClient(f"dev-{token}", token)]
    s.client_claimed(None)
    s.receive(frames.encode(pb.SatInStartReplicationResp()), 1.0)
    s.receive(frames.encode(pb.SatInStartReplicationReq(lsn=start)), 1.0)
    return s


def row(id, owner, title="t"):
    return {"id": id, "owner_id": owner, "title": title}


def tx(*changes):
    return Transaction(changes=list(changes), commit_timestamp=TS, origin="pg", publication="",
                       lsn=b"")


def received(s: Session, t: Transaction, offset=(1, 7)):
    """(relations announced, ops of the SatOpLog) for one outgoing transaction."""
    actions = list(s.vaxine_transaction(s.out.subscription, t, offset))
    msgs = [a.msg for a in actions if isinstance(a, Send)]
    relations = [m.table_name for m in msgs if isinstance(m, pb.SatRelation)]
    oplog = [m for m in msgs if isinstance(m, pb.SatOpLog)]
    assert len(oplog) == 1, msgs
    ops = oplog[0].ops
    assert ops[0].WhichOneof("op") == "begin" and ops[-1].WhichOneof("op") == "commit"
    assert ops[-1].commit.lsn == encode_offset(offset)  # the client's lsn always advances
    return relations, [(op.WhichOneof("op"), _row(op)) for op in ops[1:-1]]


def _row(op):
    kind = op.WhichOneof("op")
    body = getattr(op, kind)
    data = body.old_row_data if kind == "delete" else body.row_data
    return [bytes(v).decode() for v in data]


def test_each_client_receives_only_its_rows_and_only_visible_relations():
    alice, bob = session("alice"), session("bob")
    t = tx(UpdatedRecord(ITEMS.relation, row("1", "alice")),
           NewRecord(SECRETS.relation, {"id": "s", "body": "secret"}),
           NewRecord(ITEMS.relation, row("2", "bob")))
    assert received(alice, t) == (["items"], [("update", ["1", "alice", "t"])])
    # alice's row updated, and the log has no old row: bob may have had it, so he gets a
    # delete of its key, never its other columns.
    assert received(bob, t) == (["items"], [("delete", ["1", "", ""]),
                                            ("insert", ["2", "bob", "t"])])


def test_a_row_moving_between_owners_leaves_one_and_enters_the_other():
    alice, bob = session("alice"), session("bob")
    move = tx(UpdatedRecord(ITEMS.relation, {"owner_id": "bob"}, row("1", "alice")))
    assert received(alice, move)[1] == [("delete", ["1", "alice", "t"])]
    assert received(bob, move)[1] == [("insert", ["1", "bob", "t"])]


def test_a_transaction_with_nothing_visible_still_advances_the_lsn():
    alice = session("alice")
    relations, ops = received(alice, tx(NewRecord(SECRETS.relation, {"id": "s", "body": "x"})),
                              offset=(3, 9))
    assert (relations, ops) == ([], [])
    assert alice.out.sent_transactions == 1


def test_clients_with_equal_filters_share_one_encoding_others_do_not():
    cache = OplogCache()
    a1, a2, bob = session("alice", cache), session("alice", cache), session("bob", cache)
    assert a1.filter is a2.filter and a1.filter is not bob.filter
    assert cache.distinct_filters() == 2
    t = tx(NewRecord(ITEMS.relation, row("1", "alice")))
    first = list(a1.vaxine_transaction(a1.out.subscription, t, (1, 1)))
    # The caught-up fast path hands the second alice the very same bytes...
    shared = a2.shared_oplog(a2.out.subscription, t, (1, 1))
    assert shared is None  # items not announced to a2 yet: through the session once
    second = list(a2.vaxine_transaction(a2.out.subscription, t, (1, 1)))
    assert first[-1].raw is second[-1].raw
    t2 = tx(UpdatedRecord(ITEMS.relation, row("2", "alice")))
    list(a1.vaxine_transaction(a1.out.subscription, t2, (1, 2)))
    assert a2.shared_oplog(a2.out.subscription, t2, (1, 2)) is not None
    # ...bob, another filter, gets his own (a delete of the key).
    assert bob.shared_oplog(bob.out.subscription, t2, (1, 2)) is None
    assert received(bob, t2, (1, 2))[1] == [("delete", ["2", "", ""])]


def test_without_rules_the_session_has_no_filter_and_sends_everything():
    s = Session(authenticate, TABLES.get, "cluster", oplog_cache=OplogCache())
    s.receive(frames.encode(pb.SatAuthReq(id="d", token="alice")), 1.0)
    s.client_claimed(None)
    s.receive(frames.encode(pb.SatInStartReplicationReq(lsn=b"0")), 1.0)
    assert s.filter is None and s.status()["sync_rules"] is None
    relations, ops = received(s, tx(NewRecord(SECRETS.relation, {"id": "s", "body": "x"})))
    assert relations == ["secrets"] and ops == [("insert", ["s", "x"])]


def test_a_big_transaction_is_filtered_before_it_is_streamed():
    alice = session("alice")
    changes = [NewRecord(ITEMS.relation, row(str(i), "bob")) for i in range(DEFAULT.satellite.streamed_transaction)]
    changes.append(NewRecord(ITEMS.relation, row("mine", "alice")))
    relations, ops = received(alice, tx(*changes))
    assert relations == ["items"] and ops == [("insert", ["mine", "alice", "t"])]


def test_rules_not_ready_refuse_authentication_with_an_error():
    def unavailable(claims):
        raise FilterUnavailable("sync rules are not checked yet")

    s = Session(authenticate, TABLES.get, "cluster", bind_filter=unavailable)
    actions = s.receive(frames.encode(pb.SatAuthReq(id="d", token="alice")), 1.0)
    assert [a.msg for a in actions if isinstance(a, Send)] == [frames.error(frames.INTERNAL)]
    assert isinstance(actions[-1], Close) and not s.authenticated


def _client_tx(s: Session, lsn: bytes, *ops):
    s.receive(frames.encode(pb.SatRelation(schema_name="public", table_name="items",
                                           relation_id=5, columns=[
                                               pb.SatRelationColumn(name=c.name, type="text")
                                               for c in ITEMS.columns])), 2.0)
    s.receive(frames.encode(pb.SatRelation(schema_name="public", table_name="secrets",
                                           relation_id=6, columns=[
                                               pb.SatRelationColumn(name=c.name, type="text")
                                               for c in SECRETS.columns])), 2.0)
    body = [pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=1, lsn=lsn)), *ops,
            pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=1, lsn=lsn))]
    return s.receive(frames.encode(pb.SatOpLog(ops=body)), 2.0)


def _insert(rel, *values):
    return pb.SatTransOp(insert=pb.SatOpInsert(relation_id=rel,
                                               row_data=[v.encode() for v in values]))


def _update(new, old):
    return pb.SatTransOp(update=pb.SatOpUpdate(
        relation_id=5, row_data=[v.encode() for v in new], old_row_data=[v.encode() for v in old]))


def test_writes_inside_the_rules_are_written():
    alice = session("alice")
    actions = _client_tx(alice, b"1", _insert(5, "1", "alice", "t"),
                         _update(["1", "alice", "u"], ["1", "alice", "t"]))
    writes = [a for a in actions if isinstance(a, WriteTransaction)]
    assert len(writes) == 1 and len(writes[0].transaction.changes) == 2


def _refused(actions):
    assert not any(isinstance(a, WriteTransaction) for a in actions)
    assert [a.msg for a in actions if isinstance(a, Send)] == [
        frames.error(frames.INVALID_REQUEST)]
    assert isinstance(actions[-1], Close)
    return actions[-1].reason


def test_writes_outside_the_rules_are_refused_whole_and_counted():
    before = metrics.writes_refused.labels("public.items")._value.get()
    alice = session("alice")
    reason = _refused(_client_tx(alice, b"1", _insert(5, "1", "alice", "t"),
                                 _insert(5, "2", "bob", "t")))
    assert "refused by the sync rules" in reason and "outside this client's rules" in reason
    assert metrics.writes_refused.labels("public.items")._value.get() == before + 1
    assert alice.status()["sync_rules"]["writes_refused"] == 1


def test_moving_a_row_out_of_ones_own_scope_is_refused():
    alice = session("alice")
    assert "move the row out" in _refused(
        _client_tx(alice, b"1", _update(["1", "bob", "t"], ["1", "alice", "t"])))


def test_writing_an_invisible_table_is_refused():
    alice = session("alice")
    assert "not visible" in _refused(_client_tx(alice, b"1", _insert(6, "s", "x")))


def test_status_shows_scope_counts_never_values():
    alice = session("alice")
    scope = alice.status()["sync_rules"]
    assert scope == {"visible_tables": 1, "filtered_tables": 1, "empty_tables": 0,
                     "read_only_tables": 0, "claim_problems": 0, "writes_refused": 0}
    assert "alice" not in str(scope)


def test_a_deleted_row_of_another_scope_is_not_sent_with_its_values():
    alice = session("alice")
    gone = tx(DeletedRecord(ITEMS.relation, row("9", "bob", "private")))
    assert received(alice, gone)[1] == []


def test_the_writer_judges_updates_and_deletes_again_on_the_stored_rows():
    alice = session("alice")
    # A forged old row: bob's row claimed as alice's passes the first check...
    actions = _client_tx(alice, b"1", _update(["1", "alice", "mine now"], ["1", "alice", "t"]),
                         _insert(5, "2", "alice", "t"))
    [write] = [a for a in actions if isinstance(a, WriteTransaction)]
    tx_ = write.transaction
    checked = alice.rows_to_verify(tx_)
    assert checked == [tx_.changes[0]]  # inserts are judged on what they write
    # ...and is refused on the row as stored, before anything is written.
    refusal = alice.verify_stored_rows(tx_, checked, [row("1", "bob")])
    assert "outside this client's rules (as stored)" in _refused(refusal)
    assert alice.status()["sync_rules"]["writes_refused"] == 1
    # A socket closed meanwhile (e.g. a ping timeout) still gets nothing written.
    assert alice.closed and alice.verify_stored_rows(tx_, checked, [row("1", "bob")]) == []


def test_stored_rows_in_scope_or_absent_let_the_write_through():
    alice = session("alice")
    actions = _client_tx(alice, b"1", _update(["1", "alice", "u"], ["1", "alice", "t"]),
                         _update(["2", "alice", "u"], ["2", "alice", "t"]))
    [write] = [a for a in actions if isinstance(a, WriteTransaction)]
    checked = alice.rows_to_verify(write.transaction)
    assert alice.verify_stored_rows(write.transaction, checked,
                                    [row("1", "alice"), None]) is None


def test_without_rules_nothing_is_looked_up():
    s = Session(authenticate, TABLES.get, "cluster")
    t = tx(UpdatedRecord(ITEMS.relation, row("1", "x"), row("1", "y")))
    assert s.rows_to_verify(t) == []


def test_filters_with_the_same_outcome_for_a_transaction_share_its_encoding():
    cache = OplogCache()
    carol, dave = session("carol", cache), session("dave", cache)
    assert carol.filter is not dave.filter
    bobs = tx(UpdatedRecord(ITEMS.relation, row("1", "bob")))  # neither's: a key-only delete
    first = list(carol.vaxine_transaction(carol.out.subscription, bobs, (2, 1)))
    second = list(dave.vaxine_transaction(dave.out.subscription, bobs, (2, 1)))
    assert first[-1].raw is second[-1].raw
    # ...and dave's next socket takes the fast path with it.
    dave2 = session("dave", cache)
    dave2.out.known_relations.add(ITEMS.relation)
    assert dave2.shared_oplog(dave2.out.subscription, bobs, (2, 1)).raw is first[-1].raw


def test_a_client_syncing_from_the_start_gets_no_deletes_in_its_first_transaction():
    cache = OplogCache()
    fresh, live = session("alice", cache, start=b"0"), session("alice", cache)
    snapshot = tx(UpdatedRecord(ITEMS.relation, row("1", "bob")),
                  UpdatedRecord(ITEMS.relation, row("2", "alice")),
                  DeletedRecord(ITEMS.relation, {"id": "3"}))
    # It holds nothing: other owners' rows and tombstones are left out...
    assert received(fresh, snapshot, (1, 1))[1] == [("update", ["2", "alice", "t"])]
    # ...while a live client of the same filter, which may hold them, still gets the deletes
    # (not the fresh client's encoding).
    assert received(live, snapshot, (1, 1))[1] == [
        ("delete", ["1", "", ""]), ("update", ["2", "alice", "t"]), ("delete", ["3", "", ""])]
    # From its second transaction on, the fresh client may hold rows: deletes again.
    later = tx(UpdatedRecord(ITEMS.relation, row("2", "bob")))
    assert received(fresh, later, (1, 2))[1] == [("delete", ["2", "", ""])]
