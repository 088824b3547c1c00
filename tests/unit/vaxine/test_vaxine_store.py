"""The standalone Vaxine server's store (electric/vaxine/embedded/store.py): what it logs,
snapshot isolation with only the versions running transactions need kept in memory, the
bounded object cache, restarts, and the in-process shortcuts it takes (each must give
exactly what the slow, generic path gives)."""

from __future__ import annotations

from dataclasses import replace

import gevent
import pytest

from electric.limits import DEFAULT
from electric.vaxine import crdt_terms, etf, walproto
from electric.vaxine.crdt_terms import FLAG_DW, LWW, MAP_RR
from electric.vaxine.embedded import crdt
from electric.vaxine.embedded.engine import record_size
from electric.vaxine.embedded.store import Store, StoreFailed
from electric.vaxine.memo import EncodingMemo
from electric.vaxine.walproto import txn_frame

B = b"vax"


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path), memo=EncodingMemo())
    s.live_streams = 1  # as if a stream were open: commits are registered in its memo
    yield s
    s.close()


def latest_state(store, key):
    return store._latest((key, B))[2]


def field(name: str, ctype, op):
    return ((name.encode(), ctype), op)


def row(**cols) -> tuple:
    return ("batch", [field("row", MAP_RR, ("batch", [field(c, LWW, ("assign", v))], []))
                      for c, v in cols.items()], [])


# A mix of every operation shape the store accepts, on every type, nested and not.
OPS = [
    (b"rows:a", MAP_RR, ("batch", [field("deleted?", FLAG_DW, ("disable",)),
                                   field("id", LWW, ("assign", b"a"))], [])),
    (b"rows:a", MAP_RR, row(x=b"\x83m\x00\x00\x00\x01x", y=b"\x83d\x00\x03nil")),
    (b"rows:b", MAP_RR, ("batch", [field("deleted?", FLAG_DW, ("enable",)),
                                   field("gone", FLAG_DW, ("disable",))],
                         [(b"gone", FLAG_DW), (b"id", LWW)])),
    (b"rows:b", MAP_RR, ("reset",)),
    (b"reg", LWW, ("assign", b"v" * 300)),
    (b"flag", FLAG_DW, ("enable",)),
    (b"flag", FLAG_DW, ("reset",)),
]


def commit_ops(store, ops):
    """Commit ``ops`` in one transaction; returns ``(offset, ops ETF)`` as logged."""
    before = store.durable
    txn = store.begin()
    for key, ctype, op in ops:
        store.update(txn, key, B, ctype, op)
    store.commit(txn)
    (offset, _txid, ops_body), = store.records_after(before)
    return offset, ops_body


def test_to_term_is_exactly_what_decoding_the_state_gives(store):
    commit_ops(store, OPS)
    commit_ops(store, OPS[:2])
    store.cache.clear()  # the states as read back from SQLite, too
    for key in (b"rows:a", b"rows:b", b"reg", b"flag"):
        _ver, tname, state = store._latest((key, B))
        ctype = crdt_terms.TYPES[[t.name for t in crdt_terms.TYPES].index(tname)]
        assert crdt_terms.to_term(ctype, state) == etf.decode(b"\x83" + crdt_terms.encode_state(ctype, state))
    assert crdt_terms.to_term(MAP_RR, {}) == etf.decode(b"\x83" + crdt_terms.encode_state(MAP_RR, {}))


def test_memo_gives_the_decoded_ops_of_every_commit(store):
    for ops in (OPS, OPS[:2], OPS[2:4], OPS[4:]):
        _offset, ops_body = commit_ops(store, ops)
        found, term = store.memo.recall(ops_body)
        assert found
        assert term == etf.decode(b"\x83" + ops_body)


def test_stream_frame_decodes_the_same_with_and_without_the_memo(store):
    commit_ops(store, OPS)
    commit_ops(store, [(b"metadata:0", MAP_RR, ("batch", [field("id", LWW, ("assign", b"0"))],
                                                       []))] + OPS[:2])
    dc_id = etf.encode_body(store.dc_id)
    for offset, txid, ops_body in store.records_after(0):
        frame = txn_frame(offset, txid, ops_body, dc_id)
        hits = store.memo.hits
        via_memo = (walproto.VX_WAL_TXN, *walproto.decode_txn(frame, store.memo))
        assert store.memo.hits == hits + 1
        assert via_memo == etf.decode(frame)
    # bytes the memo does not know are decoded as usual
    store.memo.clear()
    assert (walproto.VX_WAL_TXN, *walproto.decode_txn(frame, store.memo)) == etf.decode(frame)
    assert (walproto.VX_WAL_TXN, *walproto.decode_txn(frame)) == etf.decode(frame)


def test_memo_is_bounded_and_exact():
    memo = EncodingMemo(max_bytes=10)
    memo.remember(b"abcd", lambda: "t1")
    memo.remember(b"efgh", lambda: "t2")
    assert memo.recall(memoryview(b"xxabcd")[2:]) == (True, "t1")
    memo.remember(b"ijkl", lambda: "t3")  # over 10 bytes: the oldest goes
    assert memo.recall(b"abcd") == (False, None)
    assert memo.recall(b"ijkl") == (True, "t3")
    assert memo.recall(b"ijk") == (False, None)
    memo.remember(b"x" * 11, lambda: "big")  # larger than the whole budget: ignored
    assert memo.recall(b"x" * 11) == (False, None)


def test_concurrent_commits_merge_and_views_stay_private(store):
    commit_ops(store, [OPS[0]])  # rows:a exists
    before = crdt_terms.to_term(MAP_RR, latest_state(store, b"rows:a"))
    t1, t2 = store.begin(), store.begin()
    store.update(t1, b"rows:a", B, MAP_RR, row(x=b"1"))
    store.update(t1, b"rows:a", B, MAP_RR, ("batch", [field("deleted?", FLAG_DW, ("disable",))],
                                           []))
    store.update(t2, b"rows:a", B, MAP_RR, row(y=b"2"))
    store.update(t2, b"rows:a", B, MAP_RR, ("batch", [field("deleted?", FLAG_DW, ("enable",))],
                                           []))
    # each sees its own writes only; the committed version is untouched by either
    assert (b"x", LWW) in store.read(t1, b"rows:a", B, MAP_RR)[(b"row", MAP_RR)]
    assert (b"x", LWW) not in store.read(t2, b"rows:a", B, MAP_RR)[(b"row", MAP_RR)]
    assert crdt_terms.to_term(MAP_RR, latest_state(store, b"rows:a")) == before
    store.commit(t1)  # nothing committed since its snapshot: its view becomes the state
    store.commit(t2)  # t1 committed meanwhile: t2's effects are applied to t1's result
    state = latest_state(store, b"rows:a")
    assert set(state[(b"row", MAP_RR)]) == {(b"x", LWW), (b"y", LWW)}
    # update (t1's disable) ∥ delete (t2's enable): the update wins
    assert crdt.value(FLAG_DW, state[(b"deleted?", FLAG_DW)]) is False


def test_no_memo_entries_while_no_stream_is_open(store):
    store.live_streams = 0
    _offset, ops_body = commit_ops(store, OPS[:1])
    assert store.memo.recall(ops_body) == (False, None)


def test_stored_states_mostly_escape_the_cyclic_gc(store):
    """Flag states are tuples and map keys name their type with a plain str, so all but
    each object's top-level containers are untracked by CPython after a collection (the
    rows kept in memory then cost full collections ~3 objects each instead of ~10)."""
    import gc

    commit_ops(store, OPS)
    commit_ops(store, [(b"rows:c", MAP_RR, row(x=b"1"))])
    for _ in range(3):
        gc.collect()
    for obj in [(b"rows:a", B), (b"rows:c", B), (b"reg", B), (b"flag", B)]:
        _seq, ctype, state = store._latest(obj)
        assert type(ctype) is str
        if ctype != MAP_RR:
            assert not gc.is_tracked(state)
            continue
        for key, nested in state.items():
            assert not gc.is_tracked(key) and not gc.is_tracked(nested), key


def test_stored_states_read_back_the_same_for_plain_and_atom_keyed_states():
    from electric.vaxine.embedded.engine import dump_state, load_state

    atom_keyed = {(b"id", LWW): (5, b"x"), (b"row", MAP_RR): {(b"c", LWW): (6, b"y")},
                  (b"deleted?", FLAG_DW): ((), (b"t" * 20,))}
    plain = crdt.owned_copy(MAP_RR, atom_keyed)
    for state in (atom_keyed, plain):  # the first one takes the _plain fallback
        assert load_state(MAP_RR.name, dump_state(MAP_RR.name, state)) == atom_keyed


def read_row(store, txn, key):
    state = store.read(txn, key, B, MAP_RR)
    row = state.get((b"row", MAP_RR), {})
    return {f.decode(): v[1] for (f, _t), v in row.items()}


def test_a_transaction_reads_its_snapshot_while_others_commit_and_old_versions_go_after(store):
    commit_ops(store, [(b"rows:k", MAP_RR, row(v=b"1"))])
    old = store.begin()  # sees v=1, and no rows:new
    commit_ops(store, [(b"rows:k", MAP_RR, row(v=b"2"))])
    middle = store.begin()  # sees v=2
    commit_ops(store, [(b"rows:k", MAP_RR, row(v=b"3")), (b"rows:new", MAP_RR, row(v=b"n"))])
    commit_ops(store, [(b"rows:new", MAP_RR, row(v=b"m"))])
    store.cache.clear()  # whatever is not kept for a transaction comes from SQLite
    assert read_row(store, old, b"rows:k") == {"v": b"1"}
    assert read_row(store, middle, b"rows:k") == {"v": b"2"}
    assert read_row(store, old, b"rows:new") == {}
    fresh = store.begin()
    assert read_row(store, fresh, b"rows:k") == {"v": b"3"}
    assert read_row(store, fresh, b"rows:new") == {"v": b"m"}
    assert read_row(store, middle, b"rows:new") == {}
    store.abort(old)
    assert read_row(store, middle, b"rows:k") == {"v": b"2"}  # still kept for this one
    store.abort(middle)
    store.abort(fresh)
    assert store._superseded == {} and not store._retired  # nobody needs old versions


def test_memory_is_bounded_when_writing_many_distinct_keys(tmp_path):
    store = Store(str(tmp_path), limits=replace(DEFAULT.vaxine, server_cache_objects=50))
    try:
        reader = store.begin()  # one long transaction open all along
        for t in range(40):
            txn = store.begin()
            for r in range(25):
                store.update(txn, f"rows:{t}:{r}".encode(), B, MAP_RR, row(v=str(r).encode()))
            store.commit(txn)
        assert len(store.cache) <= 50
        assert store._pending == {}  # everything durable: nothing held for the writer
        # new keys keep no old version for the open transaction: it reads them as absent
        assert store._superseded == {}
        assert read_row(store, reader, b"rows:0:3") == {}
        store.abort(reader)
        assert store._superseded == {} and not store._retired
        assert store.objects == 1000
        check = store.begin()
        assert read_row(store, check, b"rows:0:3") == {"v": b"3"}  # from SQLite
        store.abort(check)
        assert len(store.cache) <= 50
    finally:
        store.close()


def test_restart_keeps_states_offsets_and_dc_id(tmp_path):
    store = Store(str(tmp_path))
    offsets = [commit_ops(store, [(b"rows:%d" % i, MAP_RR, row(v=b"%d" % i))])[0]
               for i in range(3)]
    records = store.records_after(0)
    dc_id, log_end = store.dc_id, store.log_end
    store.close()
    assert [o for o, _t, _ops in records] == offsets == sorted(offsets)
    assert offsets[1] == offsets[0] + record_size(records[0][1], records[0][2])
    store = Store(str(tmp_path))
    try:
        assert store.records_after(0) == records
        assert (store.dc_id, store.log_end, store.objects) == (dc_id, log_end, 3)
        txn = store.begin()
        assert read_row(store, txn, b"rows:1") == {"v": b"1"}
        store.abort(txn)
        offset, _ops = commit_ops(store, [(b"rows:9", MAP_RR, row(v=b"9"))])
        assert offset == log_end
    finally:
        store.close()


def test_concurrent_commits_share_one_sqlite_transaction(store):
    def commit(i):
        txn = store.begin()
        store.update(txn, b"rows:%d" % i, B, MAP_RR, row(v=b"x"))
        store.commit(txn)

    gevent.joinall([gevent.spawn(commit, i) for i in range(20)], raise_error=True)
    assert store.transactions == 20
    assert store.stats["group_commits"] < 20
    offsets = [o for o, _t, _ops in store.records_after(0)]
    assert len(offsets) == 20 and offsets == sorted(offsets)


def test_a_failed_commit_stops_further_commits_and_acknowledges_nothing(store):
    commit_ops(store, [OPS[0]])

    def broken(*_args):
        raise OSError("disk full")

    store.engine.write = broken
    txn = store.begin()
    store.update(txn, b"rows:z", B, MAP_RR, row(v=b"1"))
    with pytest.raises(StoreFailed, match="disk full"):
        store.commit(txn)
    with pytest.raises(StoreFailed):
        store.begin()
    assert store.status()["failed"] is True


def test_background_checkpoints_keep_the_wal_bounded(tmp_path):
    limits = replace(DEFAULT.vaxine, server_wal_checkpoint=64 * 1024,
                     server_wal_hard_limit=256 * 1024)
    store = Store(str(tmp_path), limits=limits)
    try:
        for i in range(150):
            txn = store.begin()
            store.update(txn, b"rows:%d" % i, B, MAP_RR, row(v=b"x" * 20_000))
            store.commit(txn)
        assert store.stats["checkpoints"] > 0
        # ~6 MB went through the WAL (the value is in the state and in the logged Ops)
        assert store.engine.wal_bytes() < 1024 * 1024
        offsets, after = [], 0
        while batch := store.records_after(after):  # (about 1 MiB per read)
            offsets += [o for o, _t, _ops in batch]
            after = offsets[-1]
        assert len(offsets) == 150
    finally:
        store.close()


def test_recent_log_serves_tailing_readers_and_only_what_it_holds_whole():
    from electric.vaxine.embedded.store import _RecentLog

    recent = _RecentLog(limit=10, floor=100)
    assert recent.after(100, 1 << 20) == []  # nothing after the floor yet
    assert recent.after(99, 1 << 20) is None  # older than what it holds: read from disk
    recent.add(110, b"t", b"oooo")
    recent.add(120, b"t", b"oooo")
    assert [e[0] for e in recent.after(100, 1 << 20)] == [110, 120]
    assert [e[0] for e in recent.after(110, 1 << 20)] == [120]
    assert [e[0] for e in recent.after(100, 1)] == [110]  # bounded batches, at least one
    recent.add(130, b"t", b"oooo")  # over 10 bytes: 110 goes, and the floor moves to it
    assert recent.size <= 10 and recent.floor == 110
    assert recent.after(100, 1 << 20) is None
    assert [e[0] for e in recent.after(110, 1 << 20)] == [120, 130]
    recent.add(140, b"t", b"o" * 20)  # larger than the whole budget: kept nowhere
    assert recent.after(130, 1 << 20) is None and recent.after(140, 1 << 20) == []


def test_streams_get_the_same_records_from_memory_and_from_sqlite(store):
    for i in range(5):
        commit_ops(store, [(b"rows:%d" % i, MAP_RR, row(v=b"x"))])
    from_memory = store.records_after(0)
    assert len(from_memory) == 5 and store.recent.after(0, 1 << 20) is not None
    store.recent = type(store.recent)(limit=0, floor=store.durable)  # nothing in memory
    assert store.records_after(0) == from_memory
