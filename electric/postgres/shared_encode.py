"""pgoutput bodies of log transactions, encoded once and shared by every subscriber session.

Every subscriber Postgres receives the same log transactions. What differs between two
sessions is small: the LSN numbering (each slot counts from its own position), the xid in
Begin, which Relation messages a session still has to send, and the relation id it told
its subscriber for a table (each Postgres has its own table oids). Row data — the costly
part — is the same for every subscriber that describes a table with the same columns and
key. So a transaction's row messages are encoded once per *view* (the column lists and keys
of the tables it touches) without their relation id, and each session only frames them:
one ``struct.pack`` per row for the CopyData/XLogData header, with the relation id appended
to it, and the shared body after it (no copy of the body).

Only plain list transactions of the live log are shared: snapshots (backfills, new
subscribers) carry a position that is not their own, and big transactions are streamed
piece by piece (never whole in memory); those are encoded by their session alone.

The cache is bounded in bytes (least recently used first out): a session far behind the
others simply misses and encodes its own copy, which is then shared with whoever follows.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from electric import metrics
from electric.changes import RelationName, Table, TruncatedRelation
from electric.limits import DEFAULT, PostgresLimits

# Bookkeeping per shared row message on top of its body (tuple + list slot), for the bound.
_ENTRY_OVERHEAD = 96

# CopyData 'd' + len, XLogData 'w' + dataStart + walEnd + sendTime, then the pgoutput tag
# and the relation id: everything of a row message that differs per session, in one pack.
ROW_HEAD = struct.Struct(">cIcQQqcI")
ROW_HEAD_LEN = 4 + 25 + 5  # what the CopyData length counts before the shared rest

Shape = tuple[tuple[str, ...], tuple[str, ...]] | None
"""What a row message depends on in a table description: column names in order and the
primary key (``None``: the subscriber does not know the table)."""


def table_shape(table: Table | None) -> Shape:
    if table is None:
        return None
    return tuple(c.name for c in table.columns), tuple(table.primary_keys)


@dataclass
class RowBodies:
    """The row messages of one transaction for one view: ``(relation index, tag, rest)``
    each, ``rest`` being the message after its relation id (``None`` for a Truncate, whose
    relation id is inside the message: encoded by the session)."""

    rows: list[tuple[int, bytes, bytes | None]]
    skipped: int
    skipped_tables: set[str]
    size: int


@dataclass
class SharedTransaction:
    """What every session needs of one log transaction, computed once: its distinct
    relations in first-use order, each change's relation index, and the encodings by view."""

    key: Any
    relations: tuple[RelationName, ...]
    rel_index: list[int]
    truncates: frozenset[int]
    views: dict[tuple[Shape, ...], RowBodies] = field(default_factory=dict)
    size: int = 0


class SharedEncodings:
    """The publisher-wide cache (one per :class:`~electric.postgres.publisher.Publisher`)."""

    def __init__(self, limits: PostgresLimits = DEFAULT.postgres) -> None:
        self.max_bytes = limits.publisher_encode_cache_bytes
        self.bytes = 0
        self._entries: OrderedDict[Any, SharedTransaction] = OrderedDict()
        self.stats = {"encoded": 0, "reused": 0, "evicted": 0}

    def transaction(self, key: Any, changes: Sequence[Any]) -> SharedTransaction:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        relations: dict[RelationName, int] = {}
        rel_index: list[int] = []
        truncates: set[int] = set()
        for change in changes:
            rel = tuple(change.relation)
            r = relations.get(rel)
            if r is None:
                r = relations[rel] = len(relations)
            rel_index.append(r)
            if isinstance(change, TruncatedRelation):
                truncates.add(r)
        entry = SharedTransaction(key, tuple(relations), rel_index, frozenset(truncates))
        entry.size = 64 + 8 * len(rel_index)
        self._entries[key] = entry
        self._grow(entry.size)
        return entry

    def bodies(self, entry: SharedTransaction, changes: Sequence[Any],
               tables: list[Table | None], shapes: tuple[Shape, ...],
               make_message: Callable[[Table, Any], Any],
               encode: Callable[[Any], bytes]) -> RowBodies:
        """The row messages of ``changes`` as described by ``tables`` (whose shapes are
        ``shapes``): encoded now unless a session with the same view already did."""
        found = entry.views.get(shapes)
        if found is not None:
            self.stats["reused"] += 1
            metrics.encoding_reused("pgoutput")
            return found
        rows: list[tuple[int, bytes, bytes | None]] = []
        skipped = 0
        skipped_tables: set[str] = set()
        size = 0
        for change, r in zip(changes, entry.rel_index, strict=True):
            table = tables[r]
            truncate = isinstance(change, TruncatedRelation)
            if table is None or (not table.primary_keys and not truncate):
                skipped += 1
                rel = entry.relations[r]
                skipped_tables.add(f"{rel[0]}.{rel[1]}")
                continue
            message = make_message(table, change)
            if message is None:
                skipped += 1
                continue
            if truncate:
                rows.append((r, b"T", None))
                continue
            data = encode(message)  # tag, relation id (4 bytes), rest
            rows.append((r, data[:1], data[5:]))
            size += len(data) + _ENTRY_OVERHEAD
        bodies = RowBodies(rows, skipped, skipped_tables, size)
        entry.views[shapes] = bodies
        self.stats["encoded"] += 1
        metrics.transaction_encoded("pgoutput")
        if self._entries.get(entry.key) is entry:  # else already evicted: nothing to count
            entry.size += size
            self._grow(size)
        return bodies

    def _grow(self, size: int) -> None:
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _key, old = self._entries.popitem(last=False)
            self.bytes -= old.size
            self.stats["evicted"] += 1

    def status(self) -> dict[str, Any]:
        return {"transactions": len(self._entries), "bytes": self.bytes,
                "max_bytes": self.max_bytes, **self.stats}
