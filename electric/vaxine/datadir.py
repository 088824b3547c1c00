"""Where the standalone Vaxine server (``electric vaxine``) keeps its data.

Named outside :mod:`electric.vaxine.embedded` because ``electric backup-store``
(:mod:`electric.store.backup`) copies that database too, and nothing but the server itself
imports the server package.
"""

from __future__ import annotations

import os

DB_FILE = "vaxine.db"


def db_path(data_dir: str) -> str:
    return os.path.join(data_dir, DB_FILE)
