"""The standalone Vaxine server's SQLite engine (electric/vaxine/embedded/engine.py) used
directly: what a batch of commits stores, offsets, reading the log back in bounded pieces,
format checks and all-or-nothing imports."""

from __future__ import annotations

import sqlite3

import pytest

from electric.vaxine import crdt_terms, etf
from electric.vaxine.datadir import db_path
from electric.vaxine.embedded.engine import (
    Commit,
    Engine,
    EngineError,
    EngineReader,
    header_size,
    record_size,
)
from electric.vaxine.embedded.store import DEFAULT_NODE

B = b"vax"
ROW = {(b"id", "antidote_crdt_register_lww"): (5, b"x"),
       (b"row", "antidote_crdt_map_rr"): {(b"c", "antidote_crdt_register_lww"): (6, b"y")},
       (b"deleted?", "antidote_crdt_flag_dw"): ((), (b"t" * 20,))}


def commit(offset, key, state=ROW, ops=b"ops"):
    return Commit(offset, 1000 + offset, b"txid%d" % offset, ops,
                  [(key, B, crdt_terms.MAP_RR.name, state)])


def test_a_new_store_starts_where_the_first_release_put_its_first_transaction(tmp_path):
    engine = Engine(str(tmp_path), DEFAULT_NODE)
    opened = engine.opened
    assert opened.log_end == header_size(opened.dc_id) > 0
    assert (opened.last_offset, opened.objects, opened.transactions) == (0, 0, 0)
    engine.close()
    again = Engine(str(tmp_path), DEFAULT_NODE)  # the DC id is fixed at creation
    assert again.opened.dc_id == opened.dc_id
    again.close()


def test_a_batch_is_stored_whole_and_read_back(tmp_path):
    engine = Engine(str(tmp_path), DEFAULT_NODE)
    start = engine.opened.log_end
    c1 = commit(start, b"k1")
    c2 = commit(start + record_size(c1.txid_body, c1.ops_body), b"k2", ops=b"o" * 100)
    end = c2.offset + record_size(c2.txid_body, c2.ops_body)
    engine.write([c1, c2], end)
    engine.close()
    reader = EngineReader(db_path(str(tmp_path)))
    assert reader.records_after(0) == [(c1.offset, c1.txid_body, c1.ops_body),
                                       (c2.offset, c2.txid_body, c2.ops_body)]
    assert reader.records_after(c1.offset) == [(c2.offset, c2.txid_body, c2.ops_body)]
    assert reader.records_after(c2.offset) == []
    # bounded pieces, but never less than one transaction
    assert len(reader.records_after(0, max_bytes=1)) == 1
    assert reader.latest(b"k2", B) == (c2.offset, crdt_terms.MAP_RR.name, ROW)
    assert reader.latest(b"nope", B) is None
    reader.close()
    reopened = Engine(str(tmp_path), DEFAULT_NODE).opened
    assert (reopened.log_end, reopened.last_offset, reopened.objects,
            reopened.transactions) == (end, c2.offset, 2, 2)


def test_a_failed_batch_stores_nothing(tmp_path):
    engine = Engine(str(tmp_path), DEFAULT_NODE)
    start = engine.opened.log_end
    engine.write([commit(start, b"k1")], start + 10)
    with pytest.raises(sqlite3.IntegrityError):  # the same offset twice: refused whole
        engine.write([commit(start + 10, b"k2"), commit(start, b"k3")], start + 99)
    reader = EngineReader(engine.path)
    assert [r[0] for r in reader.records_after(0)] == [start]
    assert reader.latest(b"k2", B) is None
    reader.close()
    engine.close()
    assert Engine(str(tmp_path), DEFAULT_NODE).opened.log_end == start + 10


def test_other_files_and_formats_are_refused_with_one_line(tmp_path):
    (tmp_path / "vaxine.db").write_bytes(b"not a database" * 100)
    with pytest.raises(EngineError, match="not a readable Vaxine store"):
        Engine(str(tmp_path), DEFAULT_NODE)
    other = tmp_path / "other"
    Engine(str(other), DEFAULT_NODE).close()
    db = sqlite3.connect(db_path(str(other)))
    db.execute("UPDATE meta SET value = '9' WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(EngineError, match="format 9"):
        Engine(str(other), DEFAULT_NODE)


def test_import_keeps_offsets_dc_id_and_end_or_imports_nothing(tmp_path):
    import marshal

    dc_id = (etf.Atom("vaxine@127.0.0.1"), (1, 2, 3))
    records = [(100, 1, b"t1", b"o1", [(b"k", B, crdt_terms.MAP_RR.name, marshal.dumps(ROW))]),
               (200, 2, b"t2", b"o2", [(b"k", B, crdt_terms.MAP_RR.name, marshal.dumps({}))])]
    engine = Engine(str(tmp_path / "a"), DEFAULT_NODE)
    assert engine.import_records(iter(records), lambda: (dc_id, 300)) == 2
    engine.close()
    opened = Engine(str(tmp_path / "a"), DEFAULT_NODE).opened
    assert (opened.dc_id, opened.log_end, opened.last_offset) == (dc_id, 300, 200)
    reader = EngineReader(db_path(str(tmp_path / "a")))
    assert reader.latest(b"k", B) == (200, crdt_terms.MAP_RR.name, {})

    def broken():
        yield records[0]
        raise OSError("read error")

    engine = Engine(str(tmp_path / "b"), DEFAULT_NODE)
    with pytest.raises(OSError):
        engine.import_records(broken(), lambda: (dc_id, 300))
    assert EngineReader(engine.path).records_after(0) == []
    engine.close()
