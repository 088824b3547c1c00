"""The embedded store's commit path: what it logs, and the in-process shortcuts it takes
(each must give exactly what the slow, generic path gives)."""

from __future__ import annotations

import pytest

from electric.vaxine import etf, stream
from electric.vaxine.embedded import crdt
from electric.vaxine.embedded.crdt import FLAG_DW, LWW, MAP_RR
from electric.vaxine.embedded.log import TxnLog
from electric.vaxine.embedded.replication import txn_frame
from electric.vaxine.embedded.store import Store, parse_record

B = b"vax"


@pytest.fixture
def store(tmp_path):
    s = Store(TxnLog(str(tmp_path / "vaxine.log"), use_threadpool=False))
    s.recover()
    s.live_streams = 1  # as if a stream were open: commits are registered in etf.memo
    yield s
    s.log.close()


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
    txn = store.begin()
    for key, ctype, op in ops:
        store.update(txn, key, B, ctype, op)
    store.commit(txn)
    offset, payload = store.log.read_records(store.txn_offsets[-1])[0]
    return offset, parse_record(payload)


def test_to_term_is_exactly_what_decoding_the_state_gives(store):
    commit_ops(store, OPS)
    commit_ops(store, OPS[:2])
    for versions in store._versions.values():
        _seq, ctype, state = versions[-1]
        assert crdt.to_term(ctype, state) == etf.decode(b"\x83" + crdt.encode_state(ctype, state))
    assert crdt.to_term(MAP_RR, {}) == etf.decode(b"\x83" + crdt.encode_state(MAP_RR, {}))


def test_memo_gives_the_decoded_ops_of_every_commit(store):
    for ops in (OPS, OPS[:2], OPS[2:4], OPS[4:]):
        _offset, record = commit_ops(store, ops)
        found, term = etf.memo.recall(record.ops_body)
        assert found
        assert term == etf.decode(b"\x83" + record.ops_body)


def test_stream_frame_decodes_the_same_with_and_without_the_memo(store):
    offset, record = commit_ops(store, OPS)
    commit_ops(store, [(b"metadata:0", MAP_RR, ("batch", [field("id", LWW, ("assign", b"0"))],
                                                       []))] + OPS[:2])
    dc_id = etf.encode_body(store.dc_id)
    for offset, payload in store.log.read_records(0):
        frame = txn_frame(offset, payload, dc_id)
        if frame is None:
            continue
        hits = etf.memo.hits
        via_memo = stream._decode_txn(frame)
        assert etf.memo.hits == hits + 1
        assert via_memo == etf.decode(frame)
    # bytes the memo does not know are decoded as usual
    etf.memo.clear()
    assert stream._decode_txn(frame) == etf.decode(frame)


def test_memo_is_bounded_and_exact():
    memo = etf.EncodingMemo(max_bytes=10)
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
    before = crdt.to_term(MAP_RR, store._versions[(b"rows:a", B)][-1][2])
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
    assert crdt.to_term(MAP_RR, store._versions[(b"rows:a", B)][-1][2]) == before
    store.commit(t1)  # nothing committed since its snapshot: its view becomes the state
    store.commit(t2)  # t1 committed meanwhile: t2's effects are applied to t1's result
    state = store._versions[(b"rows:a", B)][-1][2]
    assert set(state[(b"row", MAP_RR)]) == {(b"x", LWW), (b"y", LWW)}
    # update (t1's disable) ∥ delete (t2's enable): the update wins
    assert crdt.value(FLAG_DW, state[(b"deleted?", FLAG_DW)]) is False


def test_no_memo_entries_while_no_stream_is_open(store):
    store.live_streams = 0
    _offset, record = commit_ops(store, OPS[:1])
    assert etf.memo.recall(record.ops_body) == (False, None)


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
        _seq, ctype, state = store._versions[obj][-1]
        assert type(ctype) is str
        if ctype != MAP_RR:
            assert not gc.is_tracked(state)
            continue
        for key, nested in state.items():
            assert not gc.is_tracked(key) and not gc.is_tracked(nested), key


def test_states_blob_reads_back_the_same_for_plain_and_atom_keyed_states():
    import marshal

    from electric.vaxine.embedded import store as store_mod

    atom_keyed = {(b"id", LWW): (5, b"x"), (b"row", MAP_RR): {(b"c", LWW): (6, b"y")},
                  (b"deleted?", FLAG_DW): ((), (b"t" * 20,))}
    plain = crdt.owned_copy(MAP_RR, atom_keyed)
    blobs = [store_mod._states_blob([((b"k", B), MAP_RR, state)])
             for state in (atom_keyed, plain)]  # the first one takes the _plain fallback
    for blob in blobs:  # (marshal's bytes depend on object sharing; the values may not)
        (key, bucket, tname, loaded), = marshal.loads(blob)
        assert (key, bucket, tname) == (b"k", B, "antidote_crdt_map_rr")
        assert store_mod._unplain(MAP_RR, loaded) == atom_keyed
