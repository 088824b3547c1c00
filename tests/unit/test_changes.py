import dataclasses
from datetime import UTC, datetime

import pytest

from electric.changes import NewRecord, Transaction


def _tx() -> Transaction:
    return Transaction([NewRecord(("public", "t"), {"id": "1"})], datetime(2026, 1, 1, tzinfo=UTC),
                       origin="pg_1", publication="p", lsn=0x16B3748)


@pytest.mark.parametrize("field", ["changes", "commit_timestamp", "origin", "publication", "lsn"])
def test_a_transaction_cannot_be_changed_after_construction(field):
    tx = _tx()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(tx, field, None)
    assert tx == _tx()


def test_a_changed_copy_is_a_new_transaction_and_the_original_stays():
    tx = _tx()
    moved = dataclasses.replace(tx, lsn=(3, 7))
    assert moved.lsn == (3, 7) and moved.changes == tx.changes
    assert tx.lsn == 0x16B3748
