"""A fresh-clone copy of the project, for tests of commands the docs show.

Only what git tracks is copied (the working-tree version of each tracked file), so a folder
or file that exists here only because someone ran something locally (``log/``,
``.dev_env/``…) is not there, just as in a clean clone. What ``make deps`` would produce is
linked or copied in: the virtualenv and the generated protobuf modules.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from tests.support.electric import ROOT

# Settings the tests pass through the environment; anything inherited would leak in.
SETTING_VARS = ("CONNECTORS", "STATUS_PORT", "WEBSOCKET_PORT", "POSTGRES_REPLICATION_PORT",
                "VAXINE_API_PORT", "VAXINE_REPLICATION_PORT", "VAXINE_DATA_DIR", "VAXINE_HOST",
                "OFFSET_STORAGE_FILE", "ELECTRIC_HOST", "LOG_FILE", "LOG_LEVEL")


def clean_checkout(dest: str) -> str:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = os.path.join(ROOT, name)
        if not os.path.lexists(source):
            continue  # deleted in the working tree, not yet committed
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    os.symlink(os.path.join(ROOT, ".venv"), os.path.join(dest, ".venv"))
    for generated in glob.glob(os.path.join(ROOT, "electric", "pb", "*_pb2.py")):
        shutil.copy2(generated, os.path.join(dest, "electric", "pb"))
    return dest


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS and k != "PYTHONPATH"}
    env.update(settings)
    return env
