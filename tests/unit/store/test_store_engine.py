"""The store's SQLite engine (electric/store/engine.py), used directly: batches, merges,
the log as readers see it, big transactions, positions, format checks."""

from __future__ import annotations

import random
import shutil
import sqlite3

import pytest

from electric.changes import (
    DeletedRecord,
    NewRecord,
    SeedRecord,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.limits import DEFAULT
from electric.store.engine import (
    ChainBroken,
    Engine,
    StoreFormatError,
    db_path,
)
from electric.store.merge import RowState, UnmappableChange, plan_change, row_key
from electric.store.reader import Reader

REL = ("public", "t")
OTHER = ("s", "u")


def pks(relation):
    return {REL: ["id"], OTHER: ["a", "b"]}[relation]


@pytest.fixture
def engine(tmp_path):
    e = Engine(str(tmp_path))
    yield e
    e.close()


def read_all(path):
    """Every logged transaction that is still in the log (after any compaction)."""
    reader = Reader(path)
    out = []
    for head, first in reader.heads_after(reader.compacted_through(), 10_000):
        changes = reader.decode(first)
        for seq in range(1, head.chunks):
            changes += reader.decode(reader.chunk(head.pos, seq))
        out.append((head.pos, changes))
    reader.close()
    return out


def test_batch_positions_results_and_what_readers_get(engine):
    chain = object()
    results = engine.commit_batch([
        ([NewRecord(REL, {"id": "1", "x": "a"})], "pg_a", "pub", None),
        ([], "pg_a", "pub", None),  # nothing to store: not logged
        ([UpdatedRecord(REL, {"id": "1", "y": "b"})], "pg_b", "pub", chain),
    ], pks)
    first, nothing, second = (r[0] for r in results)
    assert nothing == 0 and 0 < first < second
    assert results[2][2] == [UpdatedRecord(REL, {"id": "1", "x": "a", "y": "b"})]
    assert read_all(engine.path) == [
        (first, [UpdatedRecord(REL, {"id": "1", "x": "a"})]),
        (second, [UpdatedRecord(REL, {"id": "1", "x": "a", "y": "b"})]),
    ]


def test_upserts_carry_the_row_the_store_had_before_to_readers_and_in_the_log(engine):
    engine.commit_batch([([NewRecord(REL, {"id": "1", "x": "a", "y": "b"})], None, None, None)],
                        pks)
    engine.commit_batch([([UpdatedRecord(REL, {"id": "1", "x": "c"})], None, None, None)], pks)
    engine.commit_batch([([DeletedRecord(REL, {"id": "1"})], None, None, None)], pks)
    engine.commit_batch([([NewRecord(REL, {"id": "1", "x": "d"})], None, None, None)], pks)
    logged = [changes[0] for _, changes in read_all(engine.path)]
    priors = [c.prior for c in logged if isinstance(c, UpdatedRecord)]
    # new row, changed row (whole old row rebuilt from the changed columns), row after a
    # delete (a tombstone is no live row)
    assert priors == [{}, {"id": "1", "x": "a", "y": "b"}, {}]
    results = engine.commit_batch([([UpdatedRecord(REL, {"id": "1", "y": "e"})], None, None,
                                     None)], pks)
    assert results[0][2][0].prior == {"id": "1", "x": "d", "y": "b"}  # the stored row


def test_a_log_written_before_priors_were_recorded_reads_as_unknown():
    from electric.store.engine import decode_chunk, encode_chunk
    changes = decode_chunk(encode_chunk([(0, 7, {"id": "1"})]), lambda rel: REL)
    assert changes == [UpdatedRecord(REL, {"id": "1"})] and changes[0].prior is None


def test_a_refused_transaction_leaves_no_trace_and_breaks_only_its_chain(engine):
    chain, other = object(), object()
    results = engine.commit_batch([
        ([NewRecord(REL, {"id": "1"})], None, None, chain),
        ([NewRecord(REL, {"nope": "2"})], None, None, chain),  # no key: refused
        ([NewRecord(REL, {"id": "3"})], None, None, chain),  # after it: not written
        ([NewRecord(REL, {"id": "4"})], None, None, other),
        ([NewRecord(REL, {"id": "5"})], None, None, None),
    ], pks)
    assert results[0][0] > 0
    assert isinstance(results[1], UnmappableChange)
    assert isinstance(results[2], ChainBroken)
    assert results[0][0] < results[3][0] < results[4][0]
    assert [[c.record["id"] for c in changes] for _, changes in read_all(engine.path)] == [
        ["1"], ["4"], ["5"]]


def test_rows_in_one_batch_see_earlier_writes_of_the_batch(engine):
    engine.commit_batch([
        ([NewRecord(REL, {"id": "1", "x": "a", "y": "a"})], None, None, None),
        ([UpdatedRecord(REL, {"id": "1", "x": "b", "y": "a"}, {"id": "1", "x": "a", "y": "a"}),
          DeletedRecord(REL, {"id": "1"})], None, None, None),
        ([UpdatedRecord(REL, {"id": "1", "x": "b", "y": "c"}, {"id": "1", "x": "b", "y": "a"})],
         None, None, None),
    ], pks)
    log = read_all(engine.path)
    assert log[1][1] == [UpdatedRecord(REL, {"id": "1", "x": "b", "y": "a"}),
                         DeletedRecord(REL, {"id": "1", "x": "b", "y": "a"})]
    assert log[2][1] == [UpdatedRecord(REL, {"id": "1", "x": "b", "y": "c"})]


def test_truncate_deletes_rows_present_then_and_later_inserts_survive(engine):
    engine.commit_batch([([NewRecord(REL, {"id": str(i)}) for i in range(3)]
                          + [NewRecord(OTHER, {"a": "1", "b": "2"})], None, None, None)], pks)
    engine.commit_batch([([DeletedRecord(REL, {"id": "2"})], None, None, None)], pks)
    engine.commit_batch([
        ([NewRecord(REL, {"id": "9"})], None, None, None),  # same batch, before the truncate
        ([TruncatedRelation(REL)], None, None, None),
        ([NewRecord(REL, {"id": "1", "v": "new"})], None, None, None),
    ], pks)
    log = read_all(engine.path)
    # the rows present at that point, as deletes (not the one already deleted)
    assert log[3][1] == [DeletedRecord(REL, {"id": str(i)}) for i in ("0", "1", "9")]
    assert log[4][1] == [UpdatedRecord(REL, {"id": "1", "v": "new"})]
    reader = Reader(engine.path)
    snapshot = [c for _, part in reader.snapshot() for c in part]
    reader.close()
    live = sorted(c.record.get("id") or c.record["a"] for c in snapshot
                  if isinstance(c, UpdatedRecord))
    assert live == ["1", "1"]  # REL's id 1 (re-inserted) and OTHER's row
    assert sorted(c.old_record["id"] for c in snapshot
                  if isinstance(c, DeletedRecord)) == ["0", "2", "9"]


def test_big_transaction_is_chunked_and_invisible_until_commit(engine):
    started = engine.begin_big()
    n = DEFAULT.store.chunk_changes + 10
    engine.add_big([NewRecord(REL, {"id": str(i)}) for i in range(n // 2)], pks)
    engine.add_big([NewRecord(REL, {"id": str(i)}) for i in range(n // 2, n)], pks)
    assert read_all(engine.path) == []  # other connections see nothing yet
    pos, _us, changes, chunks = engine.commit_big("pg_a", "pub")
    assert (pos, changes) == (started, n) and chunks >= 2
    [(first_pos, log)] = read_all(engine.path)
    assert first_pos == pos
    assert [c.record["id"] for c in log] == [str(i) for i in range(n)]


def test_aborted_big_transaction_leaves_nothing(engine):
    engine.begin_big()
    engine.add_big([NewRecord(REL, {"id": "1"})], pks)
    engine.abort_big()
    assert read_all(engine.path) == []
    assert engine.commit_batch([([NewRecord(REL, {"id": "2"})], None, None, None)], pks)[0][0] > 0
    assert [changes[0].record["id"] for _, changes in read_all(engine.path)] == ["2"]


def test_positions_are_never_reused_even_after_restoring_an_older_file(tmp_path):
    e = Engine(str(tmp_path / "a"))
    first = e.commit_batch([([NewRecord(REL, {"id": "1"})], None, None, None)], pks)[0][0]
    e.close()
    shutil.copytree(tmp_path / "a", tmp_path / "backup")
    e = Engine(str(tmp_path / "a"))
    second = e.commit_batch([([NewRecord(REL, {"id": "2"})], None, None, None)], pks)[0][0]
    e.close()
    assert second > first
    restored = Engine(str(tmp_path / "backup"))  # knows nothing of ``second``
    third = restored.commit_batch([([NewRecord(REL, {"id": "3"})], None, None, None)], pks)[0][0]
    restored.close()
    assert third > second  # positions follow the clock, not the file


def test_commit_at_keeps_given_positions(engine):
    engine.commit_at(100, 5, [NewRecord(REL, {"id": "1"})], pks)
    with pytest.raises(ValueError):
        engine.commit_at(100, 6, [NewRecord(REL, {"id": "2"})], pks)
    assert engine.commit_batch([([NewRecord(REL, {"id": "3"})], None, None, None)], pks)[0][0] > 100


def test_other_format_and_garbage_files_are_refused(tmp_path):
    e = Engine(str(tmp_path / "a"))
    e.db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    e.close()
    with pytest.raises(StoreFormatError, match="format 99"):
        Engine(str(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    with open(db_path(str(tmp_path / "b")), "wb") as f:
        f.write(b"this is not a database" * 100)
    with pytest.raises(StoreFormatError, match="not a readable store"):
        Engine(str(tmp_path / "b"))


def test_durability_settings(engine):
    assert engine.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert engine.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(sqlite3.OperationalError):  # readers are read-only
        Reader(engine.path).db.execute("DELETE FROM rows")


def test_compaction_keeps_the_newest_changes_and_the_rows(engine):
    for i in range(10):
        engine.commit_batch([([NewRecord(REL, {"id": str(i)}), NewRecord(REL, {"id": f"{i}b"})],
                              None, None, None)], pks)
    assert (engine.log_changes, engine.log_transactions, engine.row_count) == (20, 10, 20)
    through = engine.compact_log(retain_changes=6)
    assert (engine.log_changes, engine.log_transactions, engine.row_count) == (6, 3, 20)
    kept = read_all(engine.path)
    assert [c[0].record["id"] for _, c in kept] == ["7", "8", "9"]
    assert through < kept[0][0]
    reader = Reader(engine.path)
    assert reader.heads_after(through - 1, 10) is None  # that reader needs a snapshot
    assert len(reader.heads_after(through, 10)) == 3
    assert sum(len(p) for _, p in reader.snapshot()) == 20
    reader.close()
    reopened = Engine(str(engine.path.rsplit("/", 1)[0]))
    assert (reopened.compacted_through, reopened.log_changes, reopened.row_count) == (through, 6, 20)
    reopened.close()


def test_seed_rows_fill_only_keys_the_store_has_no_state_of(engine):
    from electric.changes import SeedRecord

    engine.commit_batch([([NewRecord(REL, {"id": "1", "v": "streamed, newer"}),
                           DeletedRecord(REL, {"id": "2"})], None, None, None)], pks)
    engine.commit_batch([([SeedRecord(REL, {"id": "1", "v": "copied, older"}),
                           SeedRecord(REL, {"id": "2", "v": "copied"}),
                           SeedRecord(REL, {"id": "3", "v": "only in the copy"})],
                          None, None, None)], pks)
    log = read_all(engine.path)
    assert log[-1][1] == [UpdatedRecord(REL, {"id": "3", "v": "only in the copy"})]
    assert engine.row_count == 3


def test_an_empty_big_transaction_forgets_the_relations_it_added(engine):
    engine.begin_big()
    engine.add_big([TruncatedRelation(("public", "never_seen"))], pks)
    assert engine.commit_big(None, None) == (0, 0, 0, 0)
    assert ("public", "never_seen") not in engine.relations
    pos = engine.commit_batch([([NewRecord(OTHER, {"a": "1", "b": "2"})], None, None, None)],
                              pks)[0][0]
    assert read_all(engine.path) == [(pos, [UpdatedRecord(OTHER, {"a": "1", "b": "2"})])]


def _reference(history, pk_of):
    """What readers must get: ``merge.plan_change`` applied one change at a time to a dict
    of row states (the pure rules), truncates as deletes of the live rows in key order."""
    states, logged = {}, []
    for changes in history:
        out = []
        for change in changes:
            rel = change.relation
            if isinstance(change, TruncatedRelation):
                for (r, key), st in sorted(states.items()):
                    if r == rel and not st.deleted:
                        states[(r, key)] = RowState(True, st.columns)
                        out.append(DeletedRecord(rel, st.columns))
                continue
            if isinstance(change, SeedRecord):
                key = row_key(rel, change.record, pk_of(rel))
                if (rel, key) not in states:
                    states[(rel, key)] = RowState(False, dict(change.record))
                    out.append(UpdatedRecord(rel, dict(change.record)))
                continue
            for write in plan_change(change, pk_of(rel), lambda r, k: states.get((r, k))):
                states[(rel, write.key)] = write.state
                out.append(write.as_change())
        logged.append(out)
    return logged


def test_batched_merges_equal_the_pure_rules_one_change_at_a_time(engine):
    """The planner inlines the merge rules for speed; on random histories (inserts, seeds,
    updates with and without old rows, key changes, deletes, truncates; one- and two-column
    keys; several transactions per batch) it must log exactly what the pure rules give."""
    rng = random.Random(12)
    ids = [str(i) for i in range(6)]
    current: dict = {}  # what a source would hold, to build plausible old rows

    def change():
        rel = rng.choice([REL, REL, OTHER])
        cols = ["id"] if rel == REL else ["a", "b"]
        key = {c: rng.choice(ids) for c in cols}
        row = {**key, **{c: rng.choice(["x", "y", None]) for c in ("v", "w")
                         if rng.random() < 0.8}}
        kind = rng.random()
        old = current.get((rel, tuple(key.values())))
        if old is not None and rng.random() < 0.5:  # another replica's view: stale columns
            old = {**old, **{c: rng.choice(["x", "y", None]) for c in ("v", "w")
                             if rng.random() < 0.5}}
        if kind < 0.3:
            current[(rel, tuple(key.values()))] = row
            return NewRecord(rel, row)
        if kind < 0.4:
            return SeedRecord(rel, row)
        if kind < 0.7:
            if old is not None and rng.random() < 0.2:  # the key changes
                moved = {**row, cols[0]: rng.choice(ids)}
                current[(rel, tuple(moved[c] for c in cols))] = moved
                return UpdatedRecord(rel, moved, dict(old))
            current[(rel, tuple(key.values()))] = row
            return UpdatedRecord(rel, row, dict(old) if old and rng.random() < 0.7 else None)
        if kind < 0.95:
            return DeletedRecord(rel, dict(old) if old else key)
        return TruncatedRelation(rel)

    history = []
    for _ in range(30):
        batch = [[change() for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 4))]
        results = engine.commit_batch([(c, None, None, None) for c in batch], pks)
        for changes, result in zip(batch, results, strict=True):
            assert not isinstance(result, Exception)
            history.append(changes)
            assert result[2] == _reference(history, pks)[-1]
    logged = [changes for _, changes in read_all(engine.path)]
    assert logged == [out for out in _reference(history, pks) if out]
