"""Read-only access to the embedded store (``store.db``): the log after a position, a
transaction's chunks, and snapshots of the rows. One :class:`Reader` per thread-pool call at
a time; WAL-mode readers never block the writer, nor it them."""

from __future__ import annotations

import marshal
from collections.abc import Iterator

from electric.changes import Change, DeletedRecord, RelationName, UpdatedRecord
from electric.limits import DEFAULT, StoreLimits
from electric.store.engine import TxnHead, decode_chunk
from electric.store.sqlite import connect


class Reader:
    """A read-only connection (WAL readers never block the writer, nor it them)."""

    def __init__(self, path: str, limits: StoreLimits = DEFAULT.store):
        self.chunk_changes = limits.chunk_changes
        self.db = connect(path, readonly=True)
        self.relation_names: dict[int, RelationName] = {}

    def close(self) -> None:
        self.db.close()

    def relation(self, rel_id: int) -> RelationName:
        name = self.relation_names.get(rel_id)
        if name is None:
            for rid, schema, table in self.db.execute(
                    "SELECT id, schema_name, table_name FROM relations"):
                self.relation_names[rid] = (schema, table)
            name = self.relation_names[rel_id]
        return name

    def heads_after(self, after: int, limit: int) -> list[tuple[TxnHead, bytes | None]] | None:
        """Up to ``limit`` transactions after ``after``, each with its first chunk; ``None``
        when some of the log after ``after`` was compacted away (read in the same read
        transaction as the entries, so a concurrent compaction cannot open a silent gap)."""
        db = self.db
        db.execute("BEGIN")
        try:
            if after < self.compacted_through():
                return None
            rows = db.execute(
                "SELECT t.pos, t.commit_us, t.origin, t.publication, t.changes, t.chunks, "
                "c.data FROM txns t LEFT JOIN chunks c ON c.pos = t.pos AND c.seq = 0 "
                "WHERE t.pos > ? ORDER BY t.pos LIMIT ?", (after, limit)).fetchall()
        finally:
            db.execute("COMMIT")
        return [(TxnHead(*row[:6]), row[6]) for row in rows]

    def chunk(self, pos: int, seq: int) -> bytes:
        row = self.db.execute("SELECT data FROM chunks WHERE pos = ? AND seq = ?",
                              (pos, seq)).fetchone()
        if row is None:
            raise LookupError(f"log chunk {seq} of transaction {pos} is missing")
        return row[0]

    def current_rows(self, wanted: list[tuple[RelationName, str]]) -> list[dict | None]:
        """The stored columns of each ``(relation, key)``; ``None`` for a row that is not
        stored or deleted."""
        ids = {name: rid for rid, name in ((rid, (schema, table)) for rid, schema, table in
                                           self.db.execute("SELECT id, schema_name, table_name "
                                                           "FROM relations"))}
        out: list[dict | None] = []
        for relation, key in wanted:
            rel_id = ids.get(tuple(relation))
            row = None if rel_id is None else self.db.execute(
                "SELECT deleted, columns FROM rows WHERE rel = ? AND key = ?",
                (rel_id, key)).fetchone()
            out.append(marshal.loads(row[1]) if row is not None and not row[0] else None)
        return out

    def decode(self, data: bytes) -> list[Change]:
        return decode_chunk(data, self.relation)

    def oldest_pos(self) -> int:
        row = self.db.execute("SELECT min(pos) FROM txns").fetchone()
        return row[0] or 0

    def compacted_through(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'compacted_through'").fetchone()
        return int(row[0]) if row else 0

    def open_snapshot(self, relations: list[RelationName] | None = None) -> tuple[int, int]:
        """Start a snapshot of every stored row (of ``relations`` only, when given):
        ``(position it is consistent with, rows)``. The read transaction stays open until
        :meth:`close_snapshot`."""
        self.db.execute("BEGIN")
        pos = self.db.execute("SELECT coalesce(max(pos), 0) FROM txns").fetchone()[0]
        where, args = "", ()
        if relations is not None:
            ids = [rid for rid, name in self._relation_rows() if name in set(relations)]
            where = f" WHERE rel IN ({','.join('?' * len(ids))})" if ids else " WHERE 0"
            args = tuple(ids)
        count = self.db.execute(f"SELECT count(*) FROM rows{where}", args).fetchone()[0]
        self._snapshot_cursor = self.db.execute(
            f"SELECT rel, deleted, columns FROM rows{where} ORDER BY rel, key", args)
        return pos, count

    def _relation_rows(self) -> list[tuple[int, RelationName]]:
        return [(rid, (schema, table)) for rid, schema, table in self.db.execute(
            "SELECT id, schema_name, table_name FROM relations")]

    def snapshot_piece(self, size: int | None = None) -> list[Change]:
        """The next rows of the snapshot (live rows as updates, tombstones as deletes), at
        most ``size`` (default: ``limits.chunk_changes``)."""
        size = self.chunk_changes if size is None else size
        out: list[Change] = []
        for rel, deleted, columns in self._snapshot_cursor.fetchmany(size):
            relation = self.relation(rel)
            cols = marshal.loads(columns)
            out.append(DeletedRecord(relation, cols) if deleted else UpdatedRecord(relation, cols))
        return out

    def close_snapshot(self) -> None:
        self._snapshot_cursor = None
        self.db.execute("COMMIT")

    def snapshot(self, batch: int | None = None) -> Iterator[tuple[int, list[Change]]]:
        """The whole snapshot in pieces, each with the position it is consistent with."""
        pos, _count = self.open_snapshot()
        try:
            while True:
                piece = self.snapshot_piece(batch)
                if not piece:
                    return
                yield pos, piece
        finally:
            self.close_snapshot()
