"""``electric backup-store [settings] DEST``: an online, consistent copy of the embedded store
(``store.db``), or of the standalone Vaxine server's (``vaxine.db``) when the data directory
is one of ``electric vaxine``.

Uses SQLite's backup API on a read-only connection, so it runs while Electric (or the
server) writes: the copy is the store as of one committed transaction. Restore
(docs/store.md): stop the process, put the copy in place under its file name (without any
``-wal`` or ``-shm`` file beside it), start it.
"""

from __future__ import annotations

import os
import sqlite3
import sys

from electric.store.engine import db_path
from electric.store.sqlite import connect


def source_path(data_dir: str) -> str:
    """The database to copy: Electric's store, else the standalone Vaxine server's."""
    from electric.vaxine.datadir import db_path as vaxine_db_path

    source = db_path(data_dir)
    if not os.path.exists(source) and os.path.exists(vaxine_db_path(data_dir)):
        return vaxine_db_path(data_dir)
    return source


def backup(data_dir: str, dest: str) -> int:
    """Copy the store in ``data_dir`` to ``dest`` (a new file); returns its size in bytes."""
    source = source_path(data_dir)
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
    print(f"backed up {source_path(settings.vaxine_data_dir)} to {settings.dest} ({size} bytes)")
    return 0
