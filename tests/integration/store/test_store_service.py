"""The embedded store as Electric uses it (electric/store/service.py), with gevent and the
thread pool: group commit, ordered chains, streaming (cache and disk), big transactions."""

from __future__ import annotations

from dataclasses import replace

import gevent
import pytest

from electric.changes import DeletedRecord, NewRecord, Transaction, UpdatedRecord, utc_now
from electric.limits import DEFAULT
from electric.store import BigTransaction, ChainBroken, ChainedWriter, LocalStore, UnmappableChange
from electric.store.service import ChunkedChanges

REL = ("public", "items")


def pks(_relation):
    return ["id"]


def tx(*changes) -> Transaction:
    return Transaction(list(changes), utc_now())


def ins(i, **cols) -> NewRecord:
    return NewRecord(REL, {"id": str(i), **cols})


@pytest.fixture
def store(tmp_path):
    s = LocalStore(str(tmp_path / "data"), pks)
    yield s
    s.close()


def take(stream, n, timeout=10):
    with gevent.Timeout(timeout):
        return [next(stream) for _ in range(n)]


def test_write_then_stream_from_the_start_and_live(store):
    one = store.write(tx(ins(1, v="a")))
    assert one > 0
    assert store.write(tx()) == 0  # nothing to store
    stream = store.stream(0)
    [(first, pos)] = take(stream, 1)
    assert pos == one and first.changes == [UpdatedRecord(REL, {"id": "1", "v": "a"})]
    gevent.spawn_later(0.05, store.write, tx(DeletedRecord(REL, {"id": "1"})))
    [(second, pos)] = take(stream, 1)
    assert pos > one and second.changes == [DeletedRecord(REL, {"id": "1", "v": "a"})]
    stream.close()


def test_concurrent_writers_share_group_commits_and_each_write_is_streamed_once(store):
    writers = [gevent.spawn(store.write, tx(ins(i), ins(f"{i}b"))) for i in range(200)]
    gevent.joinall(writers, raise_error=True)
    positions = sorted(w.value for w in writers)
    assert len(set(positions)) == 200 and positions[0] > 0
    assert store.stats["group_commits"] < 200  # some commits carried several transactions
    got = take(store.stream(0), 200)
    assert [pos for _, pos in got] == positions
    assert sorted(c.record["id"] for t, _ in got for c in t.changes) == sorted(
        [str(i) for i in range(200)] + [f"{i}b" for i in range(200)])


def test_an_unmappable_write_fails_alone_and_breaks_its_chain_until_reset(store):
    writer = ChainedWriter(store)
    a = writer(tx(ins(1)))
    bad = writer(tx(NewRecord(REL, {"no_id": "x"})))
    after = writer(tx(ins(3)))
    other = store.submit(tx(ins(4)))
    gevent.joinall([a, bad, after, other])
    assert 0 < a.get() < other.get()
    assert isinstance(bad.exception, UnmappableChange)
    assert isinstance(after.exception, ChainBroken)
    late = writer(tx(ins(5)))  # still broken: the source has not written 2 and 3 again
    assert isinstance(late.wait() or late.exception, ChainBroken)
    writer.reset()
    assert writer(tx(ins(3))).get() > other.get()
    with pytest.raises(UnmappableChange):
        store.write(tx(NewRecord(REL, {"no_id": "x"})))


def test_readers_far_behind_read_from_disk(tmp_path):
    store = LocalStore(str(tmp_path), pks, limits=replace(DEFAULT.store, cache_changes=10))
    for i in range(30):
        store.write(tx(ins(i)))
    assert store.cache.floor > 0  # the oldest ones are no longer in memory
    got = take(store.stream(0), 30)
    assert [t.changes[0].record["id"] for t, _ in got] == [str(i) for i in range(30)]
    store.close()


def test_a_big_transaction_is_invisible_until_commit_and_streams_in_chunks(store):
    n = 2 * DEFAULT.store.chunk_changes + 5
    big: BigTransaction = store.begin()
    big.add([ins(i) for i in range(DEFAULT.store.chunk_changes)])
    waiting = gevent.spawn(store.write, tx(ins("small")))  # waits for the big one
    big.add([ins(i) for i in range(DEFAULT.store.chunk_changes, n)])
    gevent.sleep(0.05)
    assert store.committed == 0 and not waiting.ready()
    big_pos = big.commit(origin="pg_a")
    assert 0 < big_pos < waiting.get(timeout=10)
    [(got, pos), (small, _)] = take(store.stream(0), 2)
    assert pos == big_pos and isinstance(got.changes, ChunkedChanges) and len(got.changes) == n
    assert [c.record["id"] for c in got.changes] == [str(i) for i in range(n)]
    assert small.changes[0].record["id"] == "small"
    # and from disk, as a reader that starts later sees it
    store.cache.entries.clear()
    store.cache.positions.clear()
    store.cache.floor = 10**9
    [(_, again)] = store.read_after(0, 1)
    assert [c.record["id"] for c in again.changes][-1] == str(n - 1)


def test_an_aborted_big_transaction_stores_nothing_and_frees_the_writer(store):
    big = store.begin()
    big.add([ins(1)])
    big.abort()
    assert store.write(tx(ins(2))) > 0
    [(got, _)] = take(store.stream(0), 1)
    assert got.changes[0].record["id"] == "2"


def test_a_small_transaction_larger_than_a_chunk_reads_back_whole(store):
    n = DEFAULT.store.chunk_changes * 2 + 1
    assert store.write(tx(*[ins(i) for i in range(n)])) > 0
    store.cache.entries.clear()
    store.cache.positions.clear()
    store.cache.floor = 10**9
    [(_, got)] = store.read_after(0, 1)
    assert len(got.changes) == n and len(list(got.changes)) == n


def test_closing_settles_every_pending_write_instead_of_hanging(tmp_path):
    store = LocalStore(str(tmp_path), pks)
    big = store.begin()
    big.add([ins(1)])
    taken = store.submit(tx(ins(2)))  # the writer holds it, waiting for the big one
    gevent.sleep(0.05)
    queued = store.submit(tx(ins(3)))  # still in the queue when close runs
    closer = gevent.spawn(store.close)
    gevent.sleep(0.05)
    big.abort()
    assert closer.join(timeout=10) is None and closer.ready()
    assert taken.get(timeout=10) > 0  # a commit under way finishes
    queued.wait(timeout=10)  # committed before the close, or refused: never left hanging
    assert queued.ready() and (queued.successful() or isinstance(queued.exception, RuntimeError))
    assert isinstance(store.submit(tx(ins(4))).exception, RuntimeError)


def test_a_reader_older_than_the_compacted_log_gets_a_snapshot_then_the_rest(tmp_path):
    store = LocalStore(str(tmp_path), pks,
                       limits=replace(DEFAULT.store, retain_changes=5, cache_changes=3))
    for i in range(20):
        store.write(tx(ins(i, v="old")))
    store.write(tx(DeletedRecord(REL, {"id": "3"})))
    assert store.compacted_through > 0 and store.engine.log_changes <= 6
    stream = store.stream(0)
    [(snap, snap_pos)] = take(stream, 1)
    rows = list(snap.changes)
    assert len(rows) == len(snap.changes) == 20
    assert [c.old_record["id"] for c in rows if isinstance(c, DeletedRecord)] == ["3"]
    assert snap_pos == store.committed
    later = store.write(tx(ins(99)))
    [(nxt, pos)] = take(stream, 1)
    assert pos == later and nxt.changes[0].record["id"] == "99"
    assert store.status()["snapshots_served"] == 1
    stream.close()
    store.close()


def test_a_new_reader_gets_the_rows_instead_of_a_longer_history(store):
    positions = [store.write(tx(ins(1, v=str(i)))) for i in range(5)]  # one row, 5 versions
    positions.append(store.write(tx(ins(2))))
    [(snap, pos)] = take(store.stream(0), 1)
    assert pos == store.committed == positions[-1]
    assert sorted((c.record["id"], c.record.get("v")) for c in snap.changes) == [
        ("1", "4"), ("2", None)]
    # a reader with a position still gets the log itself
    [(nxt, nxt_pos)] = take(store.stream(positions[-2]), 1)
    assert nxt_pos == positions[-1] and nxt.changes[0].record["id"] == "2"


def test_current_rows_by_primary_key_for_the_sync_rules_write_check(store):
    store.write(tx(ins(1, owner="bob"), ins(2, owner="alice")))
    store.write(tx(DeletedRecord(REL, {"id": "2"})))
    # Looked up by the key of whatever record is given (a client's claimed old row).
    assert store.current_rows([(REL, {"id": "1", "owner": "alice"}), (REL, {"id": "2"}),
                               (REL, {"id": "3"}), (("public", "other"), {"id": "1"})]) == [
        {"id": "1", "owner": "bob"}, None, None, None]
