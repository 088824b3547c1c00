"""SQLite plumbing shared by Electric's two storage engines (the embedded store,
:mod:`electric.store.engine`, and the standalone Vaxine server,
:mod:`electric.vaxine.embedded.engine`): one way to open a database (WAL journal,
``synchronous=FULL``, a bounded page cache), the ``meta`` table of small durable facts, the
files that make up a database (for size reports and backups), and the gevent side of a
group-committing writer: taking every write waiting as one batch, running blocking SQLite
calls in the hub's thread pool, and a small pool of read-only connections.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import gevent
from gevent.queue import Queue

# SQLite's page cache per connection, in KiB (negative cache_size = KiB): bounds memory.
CACHE_KIB = 16 * 1024

META_SQL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"


def connect(path: str, readonly: bool = False, cache_kib: int = CACHE_KIB) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN``/``COMMIT``), WAL
    journal, a commit durable once it returns, at most ``cache_kib`` of page cache."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; on any error ``ROLLBACK`` (its own failure ignored:
    the connection may already have rolled back) and the error raised."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


def get_meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def put_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def file_bytes(path: str) -> int | None:
    """Size of a database with its write-ahead log (``None`` when it cannot be read)."""
    try:
        return sum(os.path.getsize(path + suffix) for suffix in ("", "-wal")
                   if os.path.exists(path + suffix))
    except OSError:
        return None


def in_thread(fn: Callable, *args) -> Any:
    """Run a blocking call in the hub's thread pool: the event loop keeps serving meanwhile
    (sqlite3 releases the GIL while SQLite works and while the disk syncs)."""
    return gevent.get_hub().threadpool.apply(fn, args)


T = TypeVar("T")
R = TypeVar("R")


def take_batch(queue: Queue, max_items: int, max_size: int | None = None,
               size_of: Callable[[T], int] | None = None,
               accept: Callable[[T], bool] | None = None) -> list[T]:
    """A group commit's batch: waits for a first item, then takes every item waiting at that
    moment, up to ``max_items`` (and ``max_size`` by ``size_of``). Items ``accept`` refuses
    are left out (it is up to ``accept`` to answer them)."""
    batch: list[T] = []
    size = 0
    while True:
        item = queue.get() if not batch else queue.get_nowait()
        if accept is None or accept(item):
            batch.append(item)
            if size_of is not None:
                size += size_of(item)
        if batch and (queue.empty() or len(batch) >= max_items
                      or (max_size is not None and size >= max_size)):
            return batch


class ReaderPool(Generic[R]):
    """Up to ``size`` read-only handles, opened on first need, each used by one thread-pool
    call at a time (WAL readers never block the writer, nor it them)."""

    def __init__(self, open_reader: Callable[[], R], size: int = 4):
        self._open = open_reader
        self._idle: Queue = Queue()
        self._unopened = size

    def run(self, fn: Callable[[R], Any]) -> Any:
        if self._idle.qsize() == 0 and self._unopened > 0:
            self._unopened -= 1
            self._idle.put(self._open())
        reader = self._idle.get()
        try:
            return in_thread(fn, reader)
        finally:
            self._idle.put(reader)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()
