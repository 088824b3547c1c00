"""The embedded store's storage engine: rows and the transaction log in one SQLite file.

Plain synchronous code (no gevent): :mod:`electric.store.service` calls it from the hub's
thread pool, one writer at a time, so commits and fsyncs never stall the event loop.

Layout (``VAXINE_DATA_DIR/store.db``, format 1; see docs/store.md):

* ``relations`` — one id per replicated ``(schema, table)``;
* ``rows`` — the merged current state of every row ever written (tombstones included):
  ``(rel, key) → deleted, columns, pos`` where ``columns`` is a marshalled dict of column →
  text value and ``pos`` the log position that last wrote it;
* ``txns`` + ``chunks`` — the log: one ``txns`` row per committed transaction (position,
  commit time, origin, publication, number of changes) and its changes, as readers receive
  them (the whole merged row after each change), in chunks of at most
  ``StoreLimits.chunk_changes`` (``electric/limits.py``) so that a transaction of any size is written and read piece by piece.

Durability is SQLite's: WAL journal, ``synchronous=FULL`` (a commit returns once it is on
disk), and crash recovery by SQLite itself. A transaction is one SQLite transaction, so it
is visible to readers whole or not at all, also across kill -9.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from electric.changes import (
    Change,
    DeletedRecord,
    RelationName,
    UpdatedRecord,
)
from electric.limits import DEFAULT, StoreLimits
from electric.store.merge import UnmappableChange
from electric.store.planner import Planner
from electric.store.sqlite import CACHE_KIB, META_SQL, connect, get_meta, put_meta

FORMAT = 1
DB_FILE = "store.db"

_UPSERT, _DELETE = 0, 1  # kinds of log entries

_SCHEMA = META_SQL + """
CREATE TABLE IF NOT EXISTS relations (
    id INTEGER PRIMARY KEY, schema_name TEXT NOT NULL, table_name TEXT NOT NULL,
    UNIQUE (schema_name, table_name));
CREATE TABLE IF NOT EXISTS rows (
    rel INTEGER NOT NULL, key TEXT NOT NULL, deleted INTEGER NOT NULL,
    columns BLOB NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY (rel, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS txns (
    pos INTEGER PRIMARY KEY, commit_us INTEGER NOT NULL, origin TEXT, publication TEXT,
    changes INTEGER NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    pos INTEGER NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (pos, seq)) WITHOUT ROWID;
"""

PrimaryKeys = Callable[[RelationName], list[str]]


class ChainBroken(RuntimeError):
    """Not written because an earlier write of the same chain (one source's writes, which
    must become durable in order) failed; the source writes it again."""


class StoreFormatError(RuntimeError):
    """The data file is not a store this version can read (one line for the operator)."""


@dataclass(frozen=True)
class TxnHead:
    """A committed transaction as listed by the log (its changes are read separately)."""

    pos: int
    commit_us: int
    origin: str | None
    publication: str | None
    changes: int
    chunks: int


def db_path(data_dir: str) -> str:
    return os.path.join(data_dir, DB_FILE)


# --------------------------------------------------------------------------- chunks


def encode_chunk(items: list[tuple]) -> bytes:
    return marshal.dumps(items)


def decode_chunk(data: bytes, relation_of: Callable[[int], RelationName]) -> list[Change]:
    out: list[Change] = []
    for item in marshal.loads(data):
        kind, rel, columns = item[0], item[1], item[2]
        relation = relation_of(rel)
        if kind == _UPSERT:
            if len(item) == 3:  # written before the prior row was recorded: unknown
                out.append(UpdatedRecord(relation, columns))
                continue
            changed = item[3]  # 0: no live row before; else the changed columns' old values
            prior = {**columns, **changed} if type(changed) is dict else {}
            out.append(UpdatedRecord(relation, columns, None, prior))
        elif kind == _DELETE:
            out.append(DeletedRecord(relation, columns))
        else:
            raise StoreFormatError(f"unknown log entry kind {kind!r}")
    return out


# --------------------------------------------------------------------------- engine


class Engine:
    """One SQLite database; the writer side. Not thread safe: one caller at a time."""

    def __init__(self, data_dir: str, limits: StoreLimits = DEFAULT.store):
        self.chunk_changes = limits.chunk_changes
        os.makedirs(data_dir, exist_ok=True)
        self.path = db_path(data_dir)
        try:
            self.db = connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreFormatError(f"{self.path} is not a readable store ({exc})") from None
        self._check_format()
        self.relations: dict[RelationName, int] = {}
        self.relation_names: dict[int, RelationName] = {}
        self._load_relations()
        self._last_us = 0
        self._big: _BigTxn | None = None
        self._count()

    def _count(self) -> None:
        """Figures kept in memory for the status (recounted from the file when unsure)."""
        db = self.db
        self.last_pos, self.log_changes, self.log_transactions = db.execute(
            "SELECT coalesce(max(pos), 0), coalesce(sum(changes), 0), count(*) FROM txns"
        ).fetchone()
        row = db.execute("SELECT max(pos) FROM chunks").fetchone()
        self.last_pos = max(self.last_pos, row[0] or 0)
        self.row_count = db.execute("SELECT count(*) FROM rows").fetchone()[0]
        row = db.execute("SELECT value FROM meta WHERE key = 'compacted_through'").fetchone()
        self.compacted_through = int(row[0]) if row else 0

    def _check_format(self) -> None:
        try:
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreFormatError(f"{self.path} is not a readable store ({exc})") from None
        row = self.db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('format', ?)", (str(FORMAT),))
        elif row[0] != str(FORMAT):
            raise StoreFormatError(
                f"{self.path} has store format {row[0]}; this Electric reads format {FORMAT}")

    def _load_relations(self) -> None:
        self.relations.clear()
        self.relation_names.clear()
        for rel_id, schema, table in self.db.execute("SELECT id, schema_name, table_name FROM relations"):
            self.relations[(schema, table)] = rel_id
            self.relation_names[rel_id] = (schema, table)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ helpers

    def _now_us(self) -> int:
        self._last_us = max(time.time_ns() // 1000, self._last_us + 1)
        return self._last_us

    def _next_pos(self) -> int:
        """A new log position: the wall clock in µs, or just after the last one if that is
        later. Never reused, even after the data file is restored from an older backup:
        readers that already hold later positions (subscribers, Satellite clients) would
        otherwise skip the new transactions that reuse them."""
        return max(self.last_pos + 1, time.time_ns() // 1000)

    def _relation_id(self, relation: RelationName) -> int:
        rel_id = self.relations.get(relation)
        if rel_id is None:
            rel_id = self.db.execute(
                "INSERT INTO relations (schema_name, table_name) VALUES (?, ?)", relation
            ).lastrowid
            self.relations[relation] = rel_id
            self.relation_names[rel_id] = relation
        return rel_id

    def _append_log(self, pos: int, items: list, first_seq: int = 0) -> int:
        """Write ``items`` as chunks starting at ``first_seq``; returns the next seq."""
        seq = first_seq
        size = self.chunk_changes
        for start in range(0, len(items), size):
            self.db.execute("INSERT INTO chunks VALUES (?, ?, ?)",
                            (pos, seq, encode_chunk(items[start:start + size])))
            seq += 1
        return seq

    def planner(self, primary_keys: PrimaryKeys) -> Planner:
        return Planner(self, primary_keys)

    # ------------------------------------------------------------------ writing

    def commit_batch(self, batch: list[tuple[list[Change], str | None, str | None, object]],
                     primary_keys: PrimaryKeys) -> list[tuple[int, int, list[Change]] | Exception]:
        """Commit several whole transactions in one SQLite transaction (one fsync).

        Per transaction: ``(pos, commit_us, changes as readers get them)``, or the
        :class:`UnmappableChange` that refused it (nothing of it is written; the others are,
        except later ones of the same ``chain``, the fourth item, when that is not ``None``:
        they get :class:`ChainBroken`). A transaction with nothing to store gets position
        ``0`` and is not logged.
        """
        db = self.db
        results: list = []
        db.execute("BEGIN IMMEDIATE")
        try:
            planner = self.planner(primary_keys)
            keyed: list = []
            failed_chains: set[int] = set()
            for changes, _origin, _publication, chain in batch:
                if chain is not None and id(chain) in failed_chains:
                    keyed.append(ChainBroken("an earlier transaction of this source failed"))
                    continue
                try:
                    keyed.append(planner.keys(changes))
                except UnmappableChange as exc:
                    keyed.append(exc)
                    if chain is not None:
                        failed_chains.add(id(chain))
            planner.prefetch()
            txns, chunk_rows = [], []
            for (changes, origin, publication, _chain), keys in zip(batch, keyed, strict=True):
                if isinstance(keys, Exception):
                    results.append(keys)
                    continue
                out: list[Change] = []
                items: list = []
                pos = self._next_pos()
                planner.plan(changes, keys, pos, out, items)
                if not items:
                    results.append((0, 0, []))
                    continue
                commit_us = self._now_us()
                seq = 0
                size = self.chunk_changes
                for start in range(0, len(items), size):
                    chunk_rows.append((pos, seq, encode_chunk(items[start:start + size])))
                    seq += 1
                txns.append((pos, commit_us, origin, publication, len(items), seq))
                self.last_pos = pos
                results.append((pos, commit_us, out))
            new_rows = planner.flush()
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?)", chunk_rows)
            db.executemany("INSERT INTO txns VALUES (?, ?, ?, ?, ?, ?)", txns)
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.row_count += new_rows
        self.log_transactions += len(txns)
        self.log_changes += sum(t[4] for t in txns)
        return results

    def commit_at(self, pos: int, commit_us: int, changes: list[Change],
                  primary_keys: PrimaryKeys) -> None:
        """Commit one transaction at a given position (importing an older log, whose
        positions readers already hold); positions must keep increasing."""
        if pos <= self.last_pos:
            raise ValueError(f"position {pos} is not after {self.last_pos}")
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            planner = self.planner(primary_keys)
            keyed = planner.keys(changes)
            planner.prefetch()
            out: list[Change] = []
            items: list = []
            planner.plan(changes, keyed, pos, out, items)
            new_rows = planner.flush()
            seq = self._append_log(pos, items)
            db.execute("INSERT INTO txns VALUES (?, ?, NULL, NULL, ?, ?)",
                       (pos, commit_us, len(items), seq))
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.last_pos = pos
        self._last_us = max(self._last_us, commit_us)
        self.row_count += new_rows
        self.log_transactions += 1
        self.log_changes += len(items)

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._count()
        self._load_relations()

    # A transaction too big to hold in memory is written chunk by chunk inside one SQLite
    # transaction: begin_big → add_big (any number of times) → commit_big (or abort_big).

    def begin_big(self) -> int:
        if self._big is not None:
            raise RuntimeError("a big transaction is already open")
        self.db.execute("BEGIN IMMEDIATE")
        self._big = _BigTxn(self._next_pos())
        return self._big.pos

    def add_big(self, changes: list[Change], primary_keys: PrimaryKeys) -> list[Change]:
        big = self._require_big()
        out: list[Change] = []
        items: list = []
        try:
            planner = self.planner(primary_keys)
            keyed = planner.keys(changes)
            planner.prefetch()
            planner.plan(changes, keyed, big.pos, out, items)
            big.new_rows += planner.flush()
            big.seq = self._append_log(big.pos, items, big.seq)
        except BaseException:
            self.abort_big()
            raise
        big.changes += len(items)
        return out

    def commit_big(self, origin: str | None, publication: str | None) -> tuple[int, int, int, int]:
        """``(pos, commit_us, changes, chunks)``; pos 0 when the transaction stored nothing."""
        big = self._require_big()
        try:
            if big.changes == 0:
                self._rollback()  # also forgets relation ids the transaction had added
                return 0, 0, 0, 0
            commit_us = self._now_us()
            self.db.execute("INSERT INTO txns VALUES (?, ?, ?, ?, ?, ?)",
                            (big.pos, commit_us, origin, publication, big.changes, big.seq))
            self.db.execute("COMMIT")
            self.last_pos = big.pos
            self.row_count += big.new_rows
            self.log_transactions += 1
            self.log_changes += big.changes
            return big.pos, commit_us, big.changes, big.seq
        except BaseException:
            self._rollback()
            raise
        finally:
            self._big = None

    def abort_big(self) -> None:
        if self._big is not None:
            self._big = None
            self._rollback()

    def _require_big(self) -> _BigTxn:
        if self._big is None:
            raise RuntimeError("no big transaction is open")
        return self._big

    def get_meta(self, key: str) -> str | None:
        return get_meta(self.db, key)

    def put_meta(self, key: str, value: str) -> None:
        put_meta(self.db, key, value)

    # ------------------------------------------------------------------ maintenance

    def compact_log(self, retain_changes: int, step_changes: int = 100_000) -> int:
        """Drop the oldest log entries while the log holds more than ``retain_changes``
        changes (at most ``step_changes`` per call, so one call stays short); returns the
        position compacted through. Rows keep their state: a reader older than the log gets
        a snapshot of the rows instead (see service.LocalStore.stream)."""
        excess = min(self.log_changes - retain_changes, step_changes)
        if excess <= 0:
            return self.compacted_through
        cutoff, removed, count = 0, 0, 0
        for pos, changes in self.db.execute("SELECT pos, changes FROM txns ORDER BY pos"):
            if removed >= excess or pos == self.last_pos:  # always keep the newest
                break
            cutoff, removed, count = pos, removed + changes, count + 1
        if not count:
            return self.compacted_through
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM txns WHERE pos <= ?", (cutoff,))
            self.db.execute("DELETE FROM chunks WHERE pos <= ?", (cutoff,))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('compacted_through', ?)",
                            (str(cutoff),))
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.compacted_through = cutoff
        self.log_changes -= removed
        self.log_transactions -= count
        return cutoff


@dataclass
class _BigTxn:
    pos: int
    seq: int = 0
    changes: int = 0
    new_rows: int = 0


__all__ = ["Engine", "StoreFormatError", "TxnHead", "UnmappableChange", "db_path",
           "CACHE_KIB", "FORMAT", "connect", "decode_chunk"]
