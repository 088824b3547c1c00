"""Merge planning for a batch of store writes: which stored rows the changes touch, their
merged states, and the log entries readers get (the rules are in :mod:`electric.store.merge`).

Plain synchronous code, run by :class:`electric.store.engine.Engine` inside its SQLite
transaction.
"""

from __future__ import annotations

import json
import marshal
from typing import TYPE_CHECKING

from electric.changes import (
    DeletedRecord,
    NewRecord,
    RelationName,
    SeedRecord,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.store.merge import RowState, change_keys, plan_change

if TYPE_CHECKING:
    from electric.store.engine import Engine, PrimaryKeys

_UPSERT, _DELETE = 0, 1  # kinds of log entries (see engine.decode_chunk)
_NO_ROW: dict = {}  # UpdatedRecord.prior of a row the store did not have (never mutated)


_MISSING = object()
# Keys looked up per statement: one JSON array parameter, so the statement text never
# changes and SQLite's prepared statement is reused (an ``IN (?, ?, …)`` list of varying
# length compiles a new statement per batch).
_PREFETCH_SQL = ("SELECT key, deleted, columns FROM rows WHERE rel = ? "
                 "AND key IN (SELECT value FROM json_each(?))")
_PREFETCH_KEYS = 5000


class Planner:
    """Plans the row writes of a batch of transactions against one prefetched view of the
    rows they touch, then writes the final states with one ``executemany``.

    ``keys`` (per transaction, before anything is planned) is where an unmappable change
    is found, so a refused transaction never leaves a trace in the view.

    Why it looks the way it does (it is the store's hot loop, µs per row count): a stored
    row is a plain ``(deleted, columns)`` tuple here, not a :class:`RowState`; each change
    is keyed once, with its primary key's text (the common one-column key built inline);
    the current rows of a whole batch are read with one query per relation; the merge rules
    of :mod:`electric.store.merge` are inlined for inserts, same-key updates and deletes
    (the rare update that moves a row to another key goes through ``plan_change`` itself).
    tests/unit/store/test_store_engine.py checks the inlined rules against the pure ones.
    """

    def __init__(self, engine: Engine, primary_keys: PrimaryKeys):
        self.engine = engine
        self.primary_keys = primary_keys
        self.wanted: dict[int, list[str]] = {}
        # (rel, key) → (deleted, columns), or None when the store has no such row.
        self.states: dict[tuple[int, str], tuple[bool, dict] | None] = {}
        self.dirty: dict[tuple[int, str], int] = {}
        self.absent: set[tuple[int, str]] = set()  # keys with no stored row before

    def keys(self, changes) -> list:
        """Per change ``(rel_id, key)``: ``key`` is the stored key's text, a tuple of keys
        for an update that moves the row to another key, ``None`` for a truncate. Raises
        :class:`~electric.store.merge.UnmappableChange` for a change that cannot be keyed
        (the keys of the refused transaction's earlier changes are then only read, never
        written)."""
        primary_keys, relation_id = self.primary_keys, self.engine._relation_id
        keyed = []
        append = keyed.append
        wanted = self.wanted
        last_relation, rel_id, pks, pk, want = None, 0, (), None, None
        for change in changes:
            relation = change.relation
            kind = type(change)
            if kind is TruncatedRelation:
                append((relation_id(relation), None))
                last_relation = None  # the next change of this relation looks its keys up
                continue
            if relation != last_relation:
                last_relation, rel_id = relation, relation_id(relation)
                pks = primary_keys(relation)
                pk = pks[0] if len(pks) == 1 else None
                want = wanted.get(rel_id)
                if want is None:
                    want = wanted[rel_id] = []
            if pk is not None and (kind is NewRecord or kind is DeletedRecord
                                   or kind is SeedRecord):
                # One key column (the common case), insert or delete: its text inline.
                value = (change.old_record if kind is DeletedRecord else change.record).get(pk)
                if value is None or type(value) is not str:
                    key = change_keys(change, pks)[0]  # raises the precise error
                else:
                    key = f"{len(value)}:{value}"
                append((rel_id, key))
                want.append(key)
                continue
            if pk is not None and kind is UpdatedRecord:
                # One key column, an update that keeps its key (the old row's key, when
                # sent, is the same): one key, inline. A key change takes the general path.
                value = change.record.get(pk)
                old = change.old_record
                if type(value) is str and (not old or old.get(pk) is None
                                           or old.get(pk) == value):
                    key = f"{len(value)}:{value}"
                    append((rel_id, key))
                    want.append(key)
                    continue
            keys = change_keys(change, pks)
            append((rel_id, keys[0] if len(keys) == 1 else tuple(keys)))
            want.extend(keys)
        return keyed

    def prefetch(self) -> None:
        db = self.engine.db
        states, absent = self.states, self.absent
        loads = marshal.loads
        for rel_id, keys in self.wanted.items():
            missing = [k for k in dict.fromkeys(keys) if (rel_id, k) not in states]
            for start in range(0, len(missing), _PREFETCH_KEYS):
                part = missing[start:start + _PREFETCH_KEYS]
                found = set()
                for key, deleted, columns in db.execute(_PREFETCH_SQL,
                                                        (rel_id, json.dumps(part))):
                    states[(rel_id, key)] = (bool(deleted), loads(columns))
                    found.add(key)
                for k in part:
                    if k not in found:
                        states[(rel_id, k)] = None
                        absent.add((rel_id, k))
        self.wanted.clear()

    def _load_live(self, rel_id: int) -> None:
        """Every live stored row of a relation into the view (for a truncate)."""
        states = self.states
        rows = self.engine.db.execute(
            "SELECT key, columns FROM rows WHERE rel = ? AND deleted = 0", (rel_id,))
        for key, columns in rows:
            if (rel_id, key) not in states:
                states[(rel_id, key)] = (False, marshal.loads(columns))

    def plan(self, changes, keyed: list, pos: int, out: list, items: list) -> None:
        """Merge ``changes`` (keyed by :meth:`keys`, prefetched) into the view; append what
        readers get to ``out`` and the log entries to ``items``."""
        states, dirty = self.states, self.dirty
        out_append, items_append = out.append, items.append
        for change, k in zip(changes, keyed, strict=True):
            kind = type(change)
            if kind is NewRecord:
                stored = states[k]
                if stored is None:
                    columns = dict(change.record)
                else:
                    columns = {**stored[1], **change.record}
            elif kind is UpdatedRecord and type(k[1]) is str:
                stored = states[k]
                old = change.old_record
                if stored is None:
                    columns = dict(change.record)
                elif not old:
                    columns = {**stored[1], **change.record}
                else:  # only the columns the update changed (see merge.carried_columns)
                    columns = stored[1].copy()
                    for col, value in change.record.items():
                        if old.get(col, _MISSING) != value:
                            columns[col] = value
            elif kind is DeletedRecord:
                stored = states[k]
                old = change.old_record
                keys = {col: old[col] for col in self.primary_keys(change.relation)}
                columns = keys if stored is None else {**stored[1], **keys}
                states[k] = (True, columns)
                dirty[k] = pos
                out_append(DeletedRecord(change.relation, columns))
                items_append((_DELETE, k[0], columns))
                continue
            elif kind is SeedRecord:
                stored = states[k]
                if stored is not None:
                    continue  # the store knows this row: the stream's state wins
                columns = dict(change.record)
            elif kind is TruncatedRelation:
                self._truncate(change.relation, k[0], pos, out, items)
                continue
            else:  # an update that moves the row to another key
                self._moved(change, k[0], pos, out, items)
                continue
            states[k] = (False, columns)
            dirty[k] = pos
            # The row before (for sync rules, see changes.UpdatedRecord.prior): logged as the
            # old values of the columns this change altered, 0 when there was no live row.
            if stored is None or stored[0]:
                out_append(UpdatedRecord(change.relation, columns, None, _NO_ROW))
                items_append((_UPSERT, k[0], columns, 0))
            else:
                prior = stored[1]
                out_append(UpdatedRecord(change.relation, columns, None, prior))
                items_append((_UPSERT, k[0], columns,
                              {c: v for c, v in prior.items() if columns[c] != v}))

    def _truncate(self, relation: RelationName, rel_id: int, pos: int, out: list,
                  items: list) -> None:
        # Every row present now is deleted, one by one: readers (and subscribers) remove
        # exactly the rows the store knew, so an insert that another replica made
        # concurrently survives, like with a delete.
        states, dirty = self.states, self.dirty
        self._load_live(rel_id)
        for k in sorted(k for k, st in states.items()
                        if k[0] == rel_id and st is not None and not st[0]):
            columns = states[k][1]
            states[k] = (True, columns)
            dirty[k] = pos
            out.append(DeletedRecord(relation, columns))
            items.append((_DELETE, rel_id, columns))

    def _moved(self, change, rel_id: int, pos: int, out: list, items: list) -> None:
        states, dirty = self.states, self.dirty

        def load(relation: RelationName, key: str) -> RowState | None:
            state = states[(rel_id, key)]
            return None if state is None else RowState(*state)

        for write in plan_change(change, self.primary_keys(change.relation), load):
            k = (rel_id, write.key)
            states[k] = (write.state.deleted, write.state.columns)
            dirty[k] = pos
            out.append(write.as_change())
            items.append((_DELETE if write.state.deleted else _UPSERT, rel_id,
                          write.state.columns))

    def flush(self) -> int:
        """Write the changed rows; returns how many of them are new to the store."""
        states, dumps, absent = self.states, marshal.dumps, self.absent
        rows = []
        append = rows.append
        new = 0
        for k, pos in self.dirty.items():
            deleted, columns = states[k]
            append((k[0], k[1], deleted, dumps(columns), pos))
            if k in absent:
                new += 1
                absent.discard(k)
        self.engine.db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?)", rows)
        self.dirty.clear()
        return new
