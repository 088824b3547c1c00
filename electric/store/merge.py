"""How a change merges into the stored row: pure functions, no I/O.

The embedded store commits transactions one after another (one writer, group commit), so
the Vaxine CRDTs Electric uses collapse to simple rules here:

* every column is a last-writer-wins register, and the later commit is the later writer:
  a change writes only the columns it *carries*, the others keep their stored value;
* a row's liveness is a flag that the last write sets: an insert or update makes the row
  live again even after a delete (the update-beats-delete rule as the log observes it);
* a delete keeps the row as a tombstone with its last known columns, so a later update of
  only some columns brings back a whole row, and readers can tell deletes apart from rows
  never seen.

Which columns an update carries: when the change has the old row (``REPLICA IDENTITY
FULL`` sources, Satellite ``old_row_data``) and the store already has the row, only the
columns whose value differs from the old row; otherwise every column the new row has. That
is what makes concurrent updates of different columns on two Postgres keep both. A
column Postgres did not send (unchanged TOAST) is never carried.
"""

from __future__ import annotations

from dataclasses import dataclass

from electric.changes import (
    Change,
    DeletedRecord,
    NewRecord,
    Record,
    RelationName,
    TruncatedRelation,
    UpdatedRecord,
)


class UnmappableChange(ValueError):
    """A change the store cannot key (no primary key, a key column missing or NULL).

    Permanent: retrying the same transaction cannot help, so the caller reports it.
    """


@dataclass(frozen=True)
class RowState:
    deleted: bool
    columns: Record


def row_key(relation: RelationName, record: Record, pk_columns: list[str] | tuple[str, ...]) -> str:
    """The stored key of a row: its primary-key values, length-prefixed so that no two
    different keys share a text (``("a:b",)`` and ``("a", "b")`` differ)."""
    if not pk_columns:
        raise UnmappableChange(f"{relation[0]}.{relation[1]} has no primary key")
    parts = []
    for col in pk_columns:
        value = record.get(col)
        if value is None:
            raise UnmappableChange(f"{relation[0]}.{relation[1]}: primary key column {col} "
                                   "is missing or NULL")
        parts.append(f"{len(value)}:{value}")
    return "".join(parts)


_MISSING = object()


def carried_columns(change: UpdatedRecord, stored: RowState | None) -> Record:
    """The columns an update writes (see the module notes)."""
    old = change.old_record
    if stored is None or not old:
        return change.record
    return {col: value for col, value in change.record.items()
            if old.get(col, _MISSING) != value}


def upsert(stored: RowState | None, columns: Record) -> RowState:
    if stored is None:
        return RowState(False, dict(columns))
    return RowState(False, {**stored.columns, **columns})


def tombstone(stored: RowState | None, keys: Record) -> RowState:
    if stored is None:
        return RowState(True, dict(keys))
    return RowState(True, {**stored.columns, **keys})


@dataclass(frozen=True)
class RowWrite:
    """One stored row after a change, and what readers of the log receive for it."""

    relation: RelationName
    key: str
    state: RowState

    def as_change(self) -> Change:
        if self.state.deleted:
            return DeletedRecord(self.relation, self.state.columns)
        return UpdatedRecord(self.relation, self.state.columns)


def plan_change(change: Change, pk_columns: list[str] | tuple[str, ...], load) -> list[RowWrite]:
    """The row writes of one change. ``load(relation, key)`` gives the stored row (as
    changed by earlier writes of the same transaction) or ``None``.

    Truncates are not row writes: the caller handles them per relation.
    """
    if isinstance(change, NewRecord):
        key = row_key(change.relation, change.record, pk_columns)
        return [RowWrite(change.relation, key, upsert(load(change.relation, key), change.record))]
    if isinstance(change, UpdatedRecord):
        writes = []
        key = row_key(change.relation, change.record, pk_columns)
        if change.old_record:
            old_key = _key_if_complete(change.relation, change.old_record, pk_columns)
            if old_key is not None and old_key != key:
                # The primary key changed: the old row goes, the new one is a whole row.
                keys = {col: change.old_record[col] for col in pk_columns}
                writes.append(RowWrite(change.relation, old_key,
                                       tombstone(load(change.relation, old_key), keys)))
                stored = load(change.relation, key)
                writes.append(RowWrite(change.relation, key, upsert(stored, change.record)))
                return writes
        stored = load(change.relation, key)
        writes.append(RowWrite(change.relation, key,
                               upsert(stored, carried_columns(change, stored))))
        return writes
    if isinstance(change, DeletedRecord):
        key = row_key(change.relation, change.old_record, pk_columns)
        keys = {col: change.old_record[col] for col in pk_columns}
        return [RowWrite(change.relation, key, tombstone(load(change.relation, key), keys))]
    if isinstance(change, TruncatedRelation):
        return []
    raise UnmappableChange(f"unknown change {type(change).__name__}")


def change_keys(change: Change, pk_columns: list[str] | tuple[str, ...]) -> list[str]:
    """The stored keys ``plan_change`` will look up for ``change`` (raises
    :class:`UnmappableChange` exactly when ``plan_change`` would)."""
    if isinstance(change, NewRecord):
        return [row_key(change.relation, change.record, pk_columns)]
    if isinstance(change, UpdatedRecord):
        key = row_key(change.relation, change.record, pk_columns)
        if change.old_record:
            old_key = _key_if_complete(change.relation, change.old_record, pk_columns)
            if old_key is not None and old_key != key:
                return [old_key, key]
        return [key]
    if isinstance(change, DeletedRecord):
        return [row_key(change.relation, change.old_record, pk_columns)]
    if isinstance(change, TruncatedRelation):
        return []
    raise UnmappableChange(f"unknown change {type(change).__name__}")


def _key_if_complete(relation, record, pk_columns) -> str | None:
    if all(record.get(col) is not None for col in pk_columns):
        return row_key(relation, record, pk_columns)
    return None
