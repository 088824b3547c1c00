"""SQLite plumbing shared by the embedded store and the standalone Vaxine server
(electric/store/sqlite.py)."""

from __future__ import annotations

import gevent

from electric.store.sqlite import ReaderPool, connect, file_bytes, get_meta, put_meta


def test_connections_are_durable_wal_with_a_bounded_cache(tmp_path):
    path = str(tmp_path / "x.db")
    db = connect(path, cache_kib=1024)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA cache_size").fetchone()[0] == -1024
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    assert get_meta(db, "k") is None
    put_meta(db, "k", "v")
    put_meta(db, "k", "w")
    assert get_meta(db, "k") == "w"
    assert file_bytes(path) > 0
    assert file_bytes(str(tmp_path / "missing.db")) == 0
    db.close()


def test_reader_pool_opens_at_most_its_size_and_reuses_handles(tmp_path):
    opened = []

    class Handle:
        def __init__(self):
            opened.append(self)
            self.closed = False

        def close(self):
            self.closed = True

    pool = ReaderPool(Handle, size=2)

    def use(_handle):
        import time

        time.sleep(0.05)  # (in a pool thread) overlapping uses need their own handles
        return 1

    greenlets = [gevent.spawn(pool.run, use) for _ in range(5)]
    gevent.joinall(greenlets, raise_error=True)
    assert [g.value for g in greenlets] == [1] * 5
    assert len(opened) == 2
    pool.close()
    assert all(h.closed for h in opened)
