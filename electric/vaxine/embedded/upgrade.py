"""First start of ``electric vaxine`` on a data directory of the first release.

The first release kept this server's log in ``VAXINE_DATA_DIR/vaxine.log`` (a hand-written
record file, read by :class:`electric.store.legacy.FirstReleaseLog`). Its records already
hold everything the SQLite engine stores (txid, commit time, the post-commit states and the
stream's ``Ops``), so unlike the embedded store's ``import-store`` no outside information
is needed: the server imports it itself, at the same offsets (so every Electric's stored
stream offset stays valid) and with the same DC id, then renames the old file to
``vaxine.log.imported`` (kept until the operator deletes it). The new database is built
beside it and moved into place only when complete: an interrupted import changes nothing
and runs again at the next start.
"""

from __future__ import annotations

import marshal
import os
import shutil

from electric.store.legacy import FirstReleaseLog, legacy_log
from electric.vaxine.datadir import DB_FILE
from electric.vaxine.embedded.engine import Engine, EngineError
from electric.vaxine.etf import Atom

WORK_DIR = "vaxine-import.tmp"


def needs_import(data_dir: str) -> bool:
    return (os.path.exists(legacy_log(data_dir))
            and not os.path.exists(os.path.join(data_dir, DB_FILE)))


def import_first_release(data_dir: str, node: Atom) -> int:
    """Build ``vaxine.db`` from ``vaxine.log``; returns the transactions imported."""
    work = os.path.join(data_dir, WORK_DIR)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    old = FirstReleaseLog(legacy_log(data_dir))

    def records():
        for txn in old.transactions():
            states = [(key, bucket, tname, marshal.dumps(plain))
                      for key, bucket, tname, plain in txn.states()]
            yield txn.offset, txn.commit_us, txn.txid_body, txn.ops_body, states

    engine = Engine(work, node)
    try:
        count = engine.import_records(records(), lambda: (old.dc_id, old.end))
    finally:
        engine.close()
    if count and old.dc_id is None:
        raise EngineError(f"{old.path} has transactions but no header record; not imported")
    os.replace(os.path.join(work, DB_FILE), os.path.join(data_dir, DB_FILE))
    os.rename(legacy_log(data_dir), legacy_log(data_dir) + ".imported")
    shutil.rmtree(work, ignore_errors=True)
    return count
