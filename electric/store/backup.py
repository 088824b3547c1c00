"""``electric backup-store [settings] DEST``: an online, consistent copy of the embedded store.

Uses SQLite's backup API on a read-only connection, so it runs while Electric writes: the
copy is the store as of one committed transaction. Restore (docs/store.md): stop Electric,
put the copy in place as ``VAXINE_DATA_DIR/store.db`` (without any ``store.db-wal`` or
``-shm`` beside it), start Electric.
"""

from __future__ import annotations

import os
import sqlite3
import sys

from electric.store.engine import db_path
from electric.store.sqlite import connect


def backup(data_dir: str, dest: str) -> int:
    """Copy the store in ``data_dir`` to ``dest`` (a new file); returns its size in bytes."""
    source = db_path(data_dir)
    if not os.path.exists(source):
        raise FileNotFoundError(f"no store at {source}")
    if os.path.exists(dest):
        raise FileExistsError(f"{dest} exists; name a new file")
    tmp = dest + ".partial"
    src = connect(source, readonly=True)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out, pages=4096)  # in steps, so the writer is never held for long
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            out.close()
    finally:
        src.close()
    os.replace(tmp, dest)
    return os.path.getsize(dest)


def main(argv: list[str]) -> int:
    from electric import config

    parser = config.build_parser(prog="electric backup-store")
    parser.add_argument("dest", help="file to write the copy to (must not exist)")
    settings = config.load_for_command(argv, parser=parser)
    try:
        size = backup(settings.vaxine_data_dir, settings.dest)
    except (OSError, sqlite3.Error) as exc:
        print(f"electric backup-store: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {db_path(settings.vaxine_data_dir)} to {settings.dest} ({size} bytes)")
    return 0
