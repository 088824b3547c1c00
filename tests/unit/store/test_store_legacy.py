"""Reading the first release's log (electric/store/legacy.py: FirstReleaseLog), with the file
that release wrote (tests/fixtures/vaxine/first_release)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from electric.store.legacy import FirstReleaseLog

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "vaxine" / "first_release"


@pytest.fixture
def old_dir(tmp_path):
    shutil.copy(FIXTURE / "vaxine.log", tmp_path / "vaxine.log")
    return tmp_path


def test_the_log_reads_back_in_order_with_its_dc_id_and_end(old_dir):
    old = FirstReleaseLog(str(old_dir / "vaxine.log"))
    txns = list(old.transactions())
    assert len(txns) == 4
    assert [t.offset for t in txns] == sorted(t.offset for t in txns)
    assert old.end == (FIXTURE / "vaxine.log").stat().st_size
    assert all(t.txid_body and t.ops_body and t.states() for t in txns)


def test_a_torn_last_record_ends_the_old_log_there(old_dir):
    intact = (old_dir / "vaxine.log").stat().st_size
    with open(old_dir / "vaxine.log", "ab") as f:
        f.write(b"\x00\x00\x01\x00\x12\x34\x56\x78partial")  # a record cut short
    old = FirstReleaseLog(str(old_dir / "vaxine.log"))
    assert len(list(old.transactions())) == 4
    assert old.end == intact and old.dc_id is not None
