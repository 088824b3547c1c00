"""First start of electric vaxine on a first-release data directory
(electric/vaxine/embedded/upgrade.py), with the log that release wrote
(tests/fixtures/vaxine/first_release)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from electric.store.legacy import FirstReleaseLog
from electric.vaxine.datadir import db_path
from electric.vaxine.embedded import upgrade
from electric.vaxine.embedded.engine import Engine, EngineReader
from electric.vaxine.embedded.store import DEFAULT_NODE

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "vaxine" / "first_release"


@pytest.fixture
def old_dir(tmp_path):
    shutil.copy(FIXTURE / "vaxine.log", tmp_path / "vaxine.log")
    return tmp_path


def test_import_keeps_every_transaction_at_its_offset_and_the_latest_states(old_dir):
    old = list(FirstReleaseLog(str(old_dir / "vaxine.log")).transactions())
    assert upgrade.needs_import(str(old_dir))
    assert upgrade.import_first_release(str(old_dir), DEFAULT_NODE) == len(old) == 4
    assert not upgrade.needs_import(str(old_dir))
    assert (old_dir / "vaxine.log.imported").exists()
    reader = EngineReader(db_path(str(old_dir)))
    assert reader.records_after(0) == [(t.offset, t.txid_body, t.ops_body) for t in old]
    last_states = {}
    for t in old:
        for key, bucket, tname, _plain in t.states():
            last_states[(key, bucket)] = (t.offset, tname)
    for (key, bucket), (offset, tname) in last_states.items():
        assert reader.latest(key, bucket)[:2] == (offset, tname)
    reader.close()
    opened = Engine(str(old_dir), DEFAULT_NODE).opened
    assert opened.log_end == (FIXTURE / "vaxine.log").stat().st_size
    assert opened.objects == len(last_states)


def test_an_interrupted_import_changes_nothing_and_runs_again(old_dir, monkeypatch):
    def broken(self, records, finish):
        next(iter(records))
        raise OSError("disk full")

    monkeypatch.setattr(Engine, "import_records", broken)
    with pytest.raises(OSError):
        upgrade.import_first_release(str(old_dir), DEFAULT_NODE)
    assert (old_dir / "vaxine.log").exists() and not (old_dir / "vaxine.db").exists()
    monkeypatch.undo()
    assert upgrade.import_first_release(str(old_dir), DEFAULT_NODE) == 4
    assert not (old_dir / upgrade.WORK_DIR).exists()

