"""Merge planning for a batch of store writes: which stored rows the changes touch, their
merged states, and the log entries readers get (the rules are in :mod:`electric.store.merge`).

Plain synchronous code, run by :class:`electric.store.engine.Engine` inside its SQLite
transaction.
"""

from __future__ import annotations

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
from electric.store.merge import (
    RowState,
    carried_columns,
    change_keys,
    plan_change,
    tombstone,
    upsert,
)

if TYPE_CHECKING:
    from electric.store.engine import Engine, PrimaryKeys

_UPSERT, _DELETE = 0, 1  # kinds of log entries (see engine.decode_chunk)


class Planner:
    """Plans the row writes of a batch of transactions against one prefetched view of the
    rows they touch, then writes the final states with one ``executemany``.

    ``keys`` (per transaction, before anything is planned) is where an unmappable change
    is found, so a refused transaction never leaves a trace in the view.
    """

    def __init__(self, engine: Engine, primary_keys: PrimaryKeys):
        self.engine = engine
        self.primary_keys = primary_keys
        self.wanted: dict[int, set[str]] = {}
        self.states: dict[tuple[int, str], RowState | None] = {}
        self.dirty: dict[tuple[int, str], int] = {}
        self.absent: set[tuple[int, str]] = set()  # keys with no stored row before

    def keys(self, changes) -> list:
        """Per change, its relation id and the keys it touches (see ``plan``)."""
        primary_keys, relation_id = self.primary_keys, self.engine._relation_id
        keyed = []
        last_relation, rel_id, pks = None, 0, ()
        for change in changes:
            relation = change.relation
            if relation != last_relation:
                last_relation, rel_id = relation, relation_id(relation)
                pks = () if isinstance(change, TruncatedRelation) else primary_keys(relation)
            if isinstance(change, TruncatedRelation):
                keyed.append((rel_id, ()))
                last_relation = None  # the next change of this relation looks its keys up
                continue
            keyed.append((rel_id, change_keys(change, pks)))
        for rel_id, keys in keyed:
            wanted = self.wanted.get(rel_id)
            if wanted is None:
                wanted = self.wanted[rel_id] = set()
            wanted.update(keys)
        return keyed

    def prefetch(self) -> None:
        db = self.engine.db
        states = self.states
        loads = marshal.loads
        for rel_id, keys in self.wanted.items():
            missing = [k for k in keys if (rel_id, k) not in states]
            for k in missing:
                states[(rel_id, k)] = None
                self.absent.add((rel_id, k))
            for start in range(0, len(missing), 500):
                part = missing[start:start + 500]
                sql = ("SELECT key, deleted, columns FROM rows WHERE rel = ? AND key IN ("
                       + ",".join("?" * len(part)) + ")")
                for key, deleted, columns in db.execute(sql, (rel_id, *part)):
                    states[(rel_id, key)] = RowState(bool(deleted), loads(columns))
                    self.absent.discard((rel_id, key))
        self.wanted.clear()

    def _load_live(self, rel_id: int) -> None:
        """Every live stored row of a relation into the view (for a truncate)."""
        states = self.states
        rows = self.engine.db.execute(
            "SELECT key, columns FROM rows WHERE rel = ? AND deleted = 0", (rel_id,))
        for key, columns in rows:
            if (rel_id, key) not in states:
                states[(rel_id, key)] = RowState(False, marshal.loads(columns))

    def plan(self, changes, keyed: list, pos: int, out: list, items: list) -> None:
        """Merge ``changes`` (keyed by :meth:`keys`, prefetched) into the view; append what
        readers get to ``out`` and the log entries to ``items``."""
        states, dirty = self.states, self.dirty
        for change, (rel_id, keys) in zip(changes, keyed, strict=True):
            kind = type(change)
            if kind is SeedRecord:
                k = (rel_id, keys[0])
                if states[k] is not None:
                    continue  # the store knows this row: the stream's state wins
                state = states[k] = RowState(False, dict(change.record))
                dirty[k] = pos
                out.append(UpdatedRecord(change.relation, state.columns))
                items.append((_UPSERT, rel_id, state.columns))
            elif kind is NewRecord or (kind is UpdatedRecord and len(keys) == 1):
                k = (rel_id, keys[0])
                stored = states[k]
                columns = change.record if kind is NewRecord else carried_columns(change, stored)
                state = upsert(stored, columns)
                states[k] = state
                dirty[k] = pos
                out.append(UpdatedRecord(change.relation, state.columns))
                items.append((_UPSERT, rel_id, state.columns))
            elif kind is DeletedRecord:
                k = (rel_id, keys[0])
                pks = self.primary_keys(change.relation)
                state = tombstone(states[k], {col: change.old_record[col] for col in pks})
                states[k] = state
                dirty[k] = pos
                out.append(DeletedRecord(change.relation, state.columns))
                items.append((_DELETE, rel_id, state.columns))
            elif kind is TruncatedRelation:
                # Every row present now is deleted, one by one: readers (and subscribers)
                # remove exactly the rows the store knew, so an insert that another replica
                # made concurrently survives, like with a delete.
                self._load_live(rel_id)
                for k in sorted(k for k, st in states.items()
                                if k[0] == rel_id and st is not None and not st.deleted):
                    state = states[k] = RowState(True, states[k].columns)
                    dirty[k] = pos
                    out.append(DeletedRecord(change.relation, state.columns))
                    items.append((_DELETE, rel_id, state.columns))
            else:  # an update that moves the row to another key
                def load(relation: RelationName, key: str, rel_id=rel_id) -> RowState | None:
                    return states[(rel_id, key)]

                for write in plan_change(change, self.primary_keys(change.relation), load):
                    k = (rel_id, write.key)
                    states[k] = write.state
                    dirty[k] = pos
                    out.append(write.as_change())
                    items.append((_DELETE if write.state.deleted else _UPSERT, rel_id,
                                  write.state.columns))

    def flush(self) -> int:
        """Write the changed rows; returns how many of them are new to the store."""
        states, dumps = self.states, marshal.dumps
        rows = []
        new = 0
        for k, pos in self.dirty.items():
            state = states[k]
            rows.append((k[0], k[1], int(state.deleted), dumps(state.columns), pos))
            if k in self.absent:
                new += 1
                self.absent.discard(k)
        self.engine.db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?)", rows)
        self.dirty.clear()
        return new
