"""Nobody's data is lost on upgrade or restore: a data directory of the first release (the
embedded Vaxine's ``vaxine.log``) is refused at start-up with the command that imports it, and
``electric import-store`` brings every transaction over at its old position; ``electric
backup-store`` copies a running store consistently."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime

import gevent
import pytest

from electric.changes import DeletedRecord, NewRecord, Transaction
from electric.devenv import DEV_SCHEMA_SQL
from electric.store import LocalStore
from electric.store.engine import Engine
from electric.store.legacy import LegacyDataError, check, import_log, read_legacy
from electric.store.reader import Reader
from electric.vaxine.offset import VaxineOffset
from tests.support.electric import ROOT
from tests.support.postgres import drop_database

REL = ("public", "entries")


FIRST_RELEASE_LOG = os.path.join(ROOT, "tests", "fixtures", "vaxine", "first_release",
                                 "vaxine.log")


def first_release_dir(path: str) -> list[int]:
    """A data directory of the first release: the log its embedded Vaxine wrote for these
    transactions (tests/fixtures/vaxine/first_release, see its README); returns the
    positions its readers handed out.

    a1, a2 + a3 inserted, a1 updated ("one!"), a2 deleted; table public.entries."""
    os.makedirs(path, exist_ok=True)
    shutil.copy(FIRST_RELEASE_LOG, os.path.join(path, "vaxine.log"))
    return [pos for pos, _us, _changes in read_legacy(path)]


def test_import_keeps_positions_rows_and_tombstones(tmp_path):
    data = str(tmp_path / "vaxine")
    positions = first_release_dir(data)
    assert len(positions) == 4
    with pytest.raises(LegacyDataError, match="import-store"):
        check(data)
    assert import_log(data, lambda _rel: ["id"]) == 4
    check(data)  # nothing left to import
    assert os.path.exists(os.path.join(data, "vaxine.log.imported"))
    store = LocalStore(data, lambda _rel: ["id"])
    try:
        log = store.read_after(0, 100)
        assert [pos for pos, _tx in log] == positions  # Satellite lsns / subscriber offsets hold
        final = {c.record["id"] if not isinstance(c, DeletedRecord) else c.old_record["id"]: c
                 for _pos, tx in log for c in tx.changes}
        assert final["a1"].record["content"] == "one!"
        assert isinstance(final["a2"], DeletedRecord)
        assert store.engine.row_count == 3
        # new transactions go after the imported ones
        assert store.write(Transaction([NewRecord(REL, {"id": "b"})], datetime.now(UTC))) > positions[-1]
    finally:
        store.close()


def test_electric_refuses_a_first_release_dir_then_import_store_upgrades_it(
        tmp_path, pg_factory, electric_factory):
    data = str(tmp_path / "vaxine")
    positions = first_release_dir(data)
    pg = pg_factory("upgrade")
    db = "upgrade_db"
    pg.create_database(db)
    pg.psql(DEV_SCHEMA_SQL, database=db)
    env = {"VAXINE_DATA_DIR": data, "CONNECTORS": f"pg_a={pg.url(db)}",
           "POSTGRES_SLOT": f"slot_{db}"}
    started = None
    try:
        refused = electric_factory(env=env, wait=False)
        assert refused.proc.wait(30) == 2
        assert "bin/electric --config <your ini> import-store" in refused.log()
        run_env = {**os.environ, "PYTHONPATH": ROOT, **env}
        done = subprocess.run([sys.executable, "-m", "electric.cli", "import-store"],
                              env=run_env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("imported 4 transactions")
        again = subprocess.run([sys.executable, "-m", "electric.cli", "import-store"],
                               env=run_env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 2 and "nothing to import" in again.stderr
        started = electric_factory(env=env)
        started.wait_for(lambda: started.get_json("/api/status")["detail"]["vaxine"]["rows"] == 3,
                         what="the imported rows in the store")
        assert started.get_json("/api/status")["detail"]["vaxine"]["last_position"] == positions[-1]
    finally:
        if started is not None:  # before the drop: it would hold the slot active again
            started.kill()
        drop_database(pg, db)


def test_online_backup_is_consistent_while_writes_go_on(tmp_path):
    data = str(tmp_path / "store")
    store = LocalStore(data, lambda _rel: ["id"])
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            store.write(Transaction([NewRecord(REL, {"id": str(i)}), NewRecord(REL, {"id": f"{i}b"})],
                                    datetime.now(UTC)))
            i += 1
            gevent.sleep(0)

    g = gevent.spawn(writer)
    gevent.sleep(0.3)
    dest = str(tmp_path / "copy.db")
    result = subprocess.run([sys.executable, "-m", "electric.cli", "backup-store",
                             "--vaxine-data-dir", data, dest],
                            env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                            timeout=60)
    stop.set()
    g.join()
    store.close()
    assert result.returncode == 0, result.stderr
    assert "backed up" in result.stdout
    copy = sqlite3.connect(dest)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    txns, changes = copy.execute("SELECT count(*), sum(changes) FROM txns").fetchone()
    rows_ = copy.execute("SELECT count(*) FROM rows").fetchone()[0]
    copy.close()
    assert txns > 0 and changes == 2 * txns == rows_  # whole transactions only
    restored = tmp_path / "restored"
    restored.mkdir()
    os.replace(dest, restored / "store.db")
    engine = Engine(str(restored))
    assert engine.row_count == rows_
    engine.close()
    reader = Reader(str(restored / "store.db"))
    assert len(reader.heads_after(0, 100_000)) == txns
    reader.close()
    again = subprocess.run([sys.executable, "-m", "electric.cli", "backup-store",
                            "--vaxine-data-dir", data, str(restored / "store.db")],
                           env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    assert again.returncode == 1 and "exists" in again.stderr


def test_offsets_of_imported_transactions_are_the_satellite_lsns_of_the_first_release(tmp_path):
    data = str(tmp_path / "vaxine")
    positions = first_release_dir(data)
    import_log(data, lambda _rel: ["id"])
    # The first release handed Satellite clients term_to_binary({Pos, Pos}); the same
    # bytes resume at the same place now.
    lsn = VaxineOffset(positions[1], positions[1]).to_bytes()
    assert VaxineOffset.from_bytes(lsn) == (positions[1], positions[1])
    store = LocalStore(data, lambda _rel: ["id"])
    try:
        stream = store.stream(positions[1])
        with gevent.Timeout(5):
            _tx, pos = next(stream)
        assert pos == positions[2]
        stream.close()
    finally:
        store.close()
