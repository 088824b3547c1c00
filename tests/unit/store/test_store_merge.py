"""The store's merge rules (electric/store/merge.py): pure functions, no I/O."""

from __future__ import annotations

import pytest

from electric.changes import DeletedRecord, NewRecord, TruncatedRelation, UpdatedRecord
from electric.store.merge import (
    RowState,
    UnmappableChange,
    carried_columns,
    change_keys,
    plan_change,
    row_key,
)

REL = ("public", "t")


def test_row_key_is_unambiguous_for_composite_keys():
    a = row_key(REL, {"a": "x:y", "b": "z"}, ["a", "b"])
    b = row_key(REL, {"a": "x", "b": "y:z"}, ["a", "b"])
    assert a != b
    assert row_key(REL, {"a": "x", "b": "y"}, ["a", "b"]) == "1:x1:y"


@pytest.mark.parametrize("record, pks, why", [
    ({"id": "1"}, [], "no primary key"),
    ({"v": "1"}, ["id"], "missing or NULL"),
    ({"id": None}, ["id"], "missing or NULL"),
])
def test_unkeyable_rows_are_refused(record, pks, why):
    with pytest.raises(UnmappableChange, match=why):
        row_key(REL, record, pks)
    with pytest.raises(UnmappableChange, match=why):
        change_keys(NewRecord(REL, record), pks)


def test_update_with_old_row_carries_only_changed_columns():
    stored = RowState(False, {"id": "1", "x": "x0", "y": "yB"})
    change = UpdatedRecord(REL, {"id": "1", "x": "xA", "y": "y0"}, {"id": "1", "x": "x0", "y": "y0"})
    assert carried_columns(change, stored) == {"x": "xA"}
    [write] = plan_change(change, ["id"], lambda rel, key: stored)
    assert write.state == RowState(False, {"id": "1", "x": "xA", "y": "yB"})


def test_update_without_old_row_or_stored_row_writes_every_column():
    change = UpdatedRecord(REL, {"id": "1", "x": "xA", "y": "y0"}, {"id": "1", "x": "x0", "y": "y0"})
    assert carried_columns(change, None) == change.record  # the store has no row to keep
    no_old = UpdatedRecord(REL, {"id": "1", "x": "xA"})
    assert carried_columns(no_old, RowState(False, {"id": "1", "x": "x0", "y": "y"})) == no_old.record


def test_unchanged_toast_columns_keep_their_stored_value():
    stored = RowState(False, {"id": "1", "big": "B" * 10, "v": "1"})
    change = UpdatedRecord(REL, {"id": "1", "v": "2"})  # "big" not sent
    [write] = plan_change(change, ["id"], lambda rel, key: stored)
    assert write.state.columns == {"id": "1", "big": "B" * 10, "v": "2"}


def test_delete_keeps_a_tombstone_and_an_update_brings_the_whole_row_back():
    stored = RowState(False, {"id": "1", "x": "x0", "y": "y0"})
    [gone] = plan_change(DeletedRecord(REL, {"id": "1"}), ["id"], lambda rel, key: stored)
    assert gone.state == RowState(True, {"id": "1", "x": "x0", "y": "y0"})
    assert isinstance(gone.as_change(), DeletedRecord)
    change = UpdatedRecord(REL, {"id": "1", "x": "x1", "y": "y0"}, {"id": "1", "x": "x0", "y": "y0"})
    [back] = plan_change(change, ["id"], lambda rel, key: gone.state)
    assert back.state == RowState(False, {"id": "1", "x": "x1", "y": "y0"})
    assert back.as_change() == UpdatedRecord(REL, {"id": "1", "x": "x1", "y": "y0"})


def test_delete_of_an_unknown_row_stores_its_key_only():
    [w] = plan_change(DeletedRecord(REL, {"id": "7", "v": "old"}), ["id"], lambda rel, key: None)
    assert w.state == RowState(True, {"id": "7"})


def test_primary_key_change_is_a_tombstone_plus_a_whole_new_row():
    states = {"1:1": RowState(False, {"id": "1", "v": "a"})}
    change = UpdatedRecord(REL, {"id": "2", "v": "a"}, {"id": "1"})
    assert change_keys(change, ["id"]) == ["1:1", "1:2"]
    old, new = plan_change(change, ["id"], lambda rel, key: states.get(key))
    assert (old.key, old.state) == ("1:1", RowState(True, {"id": "1", "v": "a"}))
    assert (new.key, new.state) == ("1:2", RowState(False, {"id": "2", "v": "a"}))


def test_truncate_plans_no_row_write():
    assert plan_change(TruncatedRelation(REL), [], lambda rel, key: None) == []
    assert change_keys(TruncatedRelation(REL), []) == []
