"""Storage engine of the standalone Vaxine server (``electric vaxine``): object states and
the transaction log in one SQLite file, ``VAXINE_DATA_DIR/vaxine.db`` (see docs/store.md).

Plain synchronous code (no gevent). :mod:`electric.vaxine.embedded.store` calls the writer
side from the hub's thread pool, one batch of commits at a time (group commit: one SQLite
transaction, one fsync), and reads object states and log records through read-only
connections (:class:`EngineReader`). Connections, pragmas and the ``meta`` table are the
embedded store's (:mod:`electric.store.sqlite`); durability and crash recovery are SQLite's.

Tables:

* ``objects`` — per ``(key, bucket)`` the latest committed CRDT state (its type name and the
  state in :mod:`marshal` form) and ``ver``, the log offset of the transaction that wrote it;
* ``log`` — per committed transaction its offset, commit time, the ETF of its txid and of
  its ``Ops`` list: what the WAL stream sends, spliced into a frame unchanged;
* ``meta`` — ``format``, ``dc_id`` (ETF, hex) and ``log_end`` (the offset the next
  transaction gets).

Offsets keep the first release's meaning: positions in a byte log. A transaction's offset is
the previous one plus the size of the previous transaction's record (:func:`record_size`), and
an empty log starts where the first release's header record ended, so a store imported from
a first-release ``vaxine.log`` continues exactly where that file ended.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from electric.limits import DEFAULT, VaxineLimits
from electric.store.sqlite import (
    META_SQL,
    connect,
    file_bytes,
    get_meta,
    put_meta,
    write_transaction,
)
from electric.vaxine import crdt_terms, etf
from electric.vaxine.datadir import db_path
from electric.vaxine.embedded import crdt
from electric.vaxine.etf import Atom

FORMAT = 1
# Around txid and ops, a first-release record held an 8-byte frame header, a 1-byte tag and a
# 16-byte head (commit time and two lengths).
RECORD_OVERHEAD = 25
HEADER_TAG = Atom("electric_vaxine_log")
# The WAL sizes (VaxineLimits.server_wal_*): past the first the store starts a background
# checkpoint (PASSIVE: it copies what it can while commits go on); past the second the writer
# itself checkpoints and restarts the WAL before going on. Under steady load the background
# checkpoints never find the WAL fully copied at the moment a commit starts, so the WAL only
# goes back to its start through the writer's; by then it has little left to copy.

_SCHEMA = META_SQL + """
CREATE TABLE IF NOT EXISTS objects (
    key BLOB NOT NULL, bucket BLOB NOT NULL, type TEXT NOT NULL, state BLOB NOT NULL,
    ver INTEGER NOT NULL, PRIMARY KEY (key, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    offset INTEGER PRIMARY KEY, commit_us INTEGER NOT NULL, txid BLOB NOT NULL,
    ops BLOB NOT NULL);
"""

TYPES_BY_NAME = {t.name: t for t in crdt_terms.TYPES}
# Stored states name their type with a plain str (see crdt.state_key: GC).
PLAIN_TYPE = {t: t.name for t in crdt_terms.TYPES}


class EngineError(RuntimeError):
    """The data file cannot be used (one line for the operator)."""


def record_size(txid_body: bytes, ops_body: bytes) -> int:
    """How far a transaction moves the log's end (see the module docstring)."""
    return RECORD_OVERHEAD + len(txid_body) + len(ops_body)


def header_size(dc_id: Any) -> int:
    """Where the first release's log put its first transaction, after its header record."""
    return 8 + 1 + len(etf.encode((HEADER_TAG, 1, dc_id)))


def new_dc_id(node: Atom) -> tuple:
    mega, rest = divmod(time.time_ns() // 1000, 10**12)
    sec, micro = divmod(rest, 10**6)
    return (node, (mega, sec, micro))


# --------------------------------------------------------------------------- states


def _plain(ctype: Any, state: Any) -> Any:
    """State with atoms turned into str, for marshal (which only takes exact builtins)."""
    if ctype == crdt_terms.MAP_RR:
        return {(f, str(t)): _plain(t, v) for (f, t), v in state.items()}
    return state


def _unplain(ctype: Any, plain: Any) -> Any:
    if ctype == crdt_terms.MAP_RR:
        out = {}
        for key, v in plain.items():
            out[crdt.state_key(key)] = _unplain(TYPES_BY_NAME[key[1]], v)
        return out
    if ctype == crdt_terms.FLAG_DW:
        return (tuple(plain[0]), tuple(plain[1]))
    return tuple(plain)


def dump_state(tname: str, state: Any) -> bytes:
    """A stored state in marshal form. Stored states are already plain builtins (map keys
    name their type with a plain str), so most are dumped as they are."""
    try:
        return marshal.dumps(state)
    except ValueError:
        return marshal.dumps(_plain(TYPES_BY_NAME[tname], state))


def load_state(tname: str, blob: bytes) -> Any:
    return _unplain(TYPES_BY_NAME[tname], marshal.loads(blob))


# --------------------------------------------------------------------------- writing


@dataclass
class Commit:
    """One committed transaction as the writer stores it; ``states`` are the post-commit
    ``(key, bucket, type name, state)`` of every object it wrote."""

    offset: int
    commit_us: int
    txid_body: bytes
    ops_body: bytes
    states: list[tuple[bytes, bytes, str, Any]]


@dataclass(frozen=True)
class Opened:
    """What the store needs to know about a database it opens."""

    dc_id: Any
    log_end: int
    last_offset: int
    last_commit_us: int
    objects: int
    transactions: int


class Engine:
    """The writer connection. Not thread safe: one caller at a time."""

    def __init__(self, data_dir: str, node: Atom, limits: VaxineLimits = DEFAULT.vaxine):
        os.makedirs(data_dir, exist_ok=True)
        self.path = db_path(data_dir)
        self.limits = limits
        self.cache_kib = cache_kib = limits.server_cache_kib
        self._checkpointer: sqlite3.Connection | None = None
        try:
            self.db = connect(self.path, cache_kib=cache_kib)
            # Checkpoints run beside the writer (checkpoint(), on their own connection), not
            # inside a commit, where they would hold every commit waiting for them.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            # (after a reset the WAL file is cut back to the checkpoint size, so its size
            # tells when the next checkpoint is due)
            self.db.execute(f"PRAGMA journal_size_limit={limits.server_wal_checkpoint}")
            self.db.executescript(_SCHEMA)
            self.opened = self._open(node)
        except sqlite3.DatabaseError as exc:
            raise EngineError(f"{self.path} is not a readable Vaxine store ({exc})") from None

    def _open(self, node: Atom) -> Opened:
        db = self.db
        fmt = get_meta(db, "format")
        if fmt is None:
            dc_id = new_dc_id(node)
            db.execute("BEGIN IMMEDIATE")
            put_meta(db, "format", str(FORMAT))
            put_meta(db, "dc_id", etf.encode(dc_id).hex())
            put_meta(db, "log_end", str(header_size(dc_id)))
            db.execute("COMMIT")
        elif fmt != str(FORMAT):
            raise EngineError(f"{self.path} has Vaxine store format {fmt}; this Electric reads "
                              f"format {FORMAT}")
        dc_id = etf.decode(bytes.fromhex(get_meta(db, "dc_id") or ""))
        last_offset, last_us, transactions = db.execute(
            "SELECT coalesce(max(offset), 0), coalesce(max(commit_us), 0), count(*) FROM log"
        ).fetchone()
        objects = db.execute("SELECT count(*) FROM objects").fetchone()[0]
        return Opened(dc_id, int(get_meta(db, "log_end") or 0), last_offset, last_us, objects,
                      transactions)

    def write(self, commits: list[Commit], log_end: int) -> None:
        """Store ``commits`` (in offset order) in one SQLite transaction: durable when it
        returns; nothing of them on failure."""
        db = self.db
        states = [(key, bucket, tname, dump_state(tname, state), c.offset)
                  for c in commits for key, bucket, tname, state in c.states]
        with write_transaction(db):
            db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)",
                           [(c.offset, c.commit_us, c.txid_body, c.ops_body) for c in commits])
            db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)", states)
            put_meta(db, "log_end", str(log_end))
        if self.wal_bytes() > self.limits.server_wal_hard_limit:
            db.execute("PRAGMA wal_checkpoint(RESTART)")

    def wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database without holding up commits (own
        connection; PASSIVE: whatever readers still use stays for the next one)."""
        if self._checkpointer is None:
            self._checkpointer = connect(self.path, cache_kib=256)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def import_records(self, records: Iterable[tuple[int, int, bytes, bytes, list]],
                       finish: Callable[[], tuple[Any, int]]) -> int:
        """Fill an empty store from another log, keeping its offsets: ``(offset, commit µs,
        txid ETF, ops ETF, [(key, bucket, type name, marshalled plain state)])`` in offset
        order, then ``finish()`` gives the log's DC id (``None``: keep this one) and the
        offset after it. One SQLite transaction: all or nothing. Returns the transactions
        imported."""
        db = self.db
        count = 0
        with write_transaction(db):
            if db.execute("SELECT count(*) FROM log").fetchone()[0]:
                raise EngineError(f"{self.path} is not empty; nothing was imported")
            for offset, commit_us, txid, ops, states in records:
                db.execute("INSERT INTO log VALUES (?, ?, ?, ?)", (offset, commit_us, txid, ops))
                db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                               [(key, bucket, tname, blob, offset)
                                for key, bucket, tname, blob in states])
                count += 1
            dc_id, log_end = finish()
            if dc_id is not None:
                put_meta(db, "dc_id", etf.encode(dc_id).hex())
            put_meta(db, "log_end", str(max(log_end, self.opened.log_end)))
        return count

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.db.close()


# --------------------------------------------------------------------------- reading


class EngineReader:
    """A read-only connection: latest object states and log records (only committed ones:
    a reader never sees a transaction before it is durable)."""

    def __init__(self, path: str, cache_kib: int = DEFAULT.vaxine.server_cache_kib):
        self.db = connect(path, readonly=True, cache_kib=cache_kib)

    def latest(self, key: bytes, bucket: bytes) -> tuple[int, str, Any] | None:
        """``(ver, type name, state)`` of the object, ``None`` if it was never written."""
        row = self.db.execute("SELECT ver, type, state FROM objects WHERE key = ? AND bucket = ?",
                              (key, bucket)).fetchone()
        if row is None:
            return None
        return row[0], row[1], load_state(row[1], row[2])

    def records_after(self, after: int, max_bytes: int = 1 << 20
                      ) -> list[tuple[int, bytes, bytes]]:
        """``(offset, txid ETF, ops ETF)`` of the transactions after offset ``after``, in
        order, up to about ``max_bytes`` (at least one when there is one)."""
        out = []
        size = 0
        cursor = self.db.execute(
            "SELECT offset, txid, ops FROM log WHERE offset > ? ORDER BY offset", (after,))
        try:
            for offset, txid, ops in cursor:
                out.append((offset, txid, ops))
                size += len(txid) + len(ops)
                if size >= max_bytes:
                    break
        finally:
            cursor.close()  # ends the read: an open statement would hold back checkpoints
        return out

    def close(self) -> None:
        self.db.close()


def size_bytes(data_dir: str) -> int | None:
    return file_bytes(db_path(data_dir))
