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


def test_take_batch_takes_what_waits_within_bounds_and_leaves_out_refused_items():
    from gevent.queue import Queue

    from electric.store.sqlite import take_batch

    queue = Queue()
    for item in [3, 4, -1, 5, 6, 7]:
        queue.put(item)
    refused = []

    def accept(item):
        if item < 0:
            refused.append(item)
            return False
        return True

    assert take_batch(queue, max_items=10, max_size=12, size_of=lambda i: i,
                      accept=accept) == [3, 4, 5]  # 12 reached
    assert refused == [-1]
    assert take_batch(queue, max_items=1) == [6]
    assert take_batch(queue, max_items=10) == [7]  # nothing else waits: no blocking
    later = gevent.spawn(take_batch, queue, 10)  # an empty queue: waits for the first item
    gevent.sleep(0)
    assert not later.ready()
    queue.put(8)
    assert later.get(timeout=5) == [8]
