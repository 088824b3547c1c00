"""The password subscribers give on the replication port (``POSTGRES_REPLICATION_PASSWORD``).

Secure by default: when the setting is unset, Electric generates a random password on its
first start and keeps it in a file named ``replication_password`` in the directory of
``OFFSET_STORAGE_FILE`` — next to the offsets it belongs with, so a restarted Electric (and
the subscriptions it wrote the password into) keep working, and wiping Electric's data makes
a new one. The file is created with mode 0600 and never logged; an operator who needs the
password (to subscribe a Postgres by hand) reads it there or sets the variable instead.
"""

from __future__ import annotations

import os
import secrets

FILE_NAME = "replication_password"
GENERATED_BYTES = 24  # 32 URL-safe characters


class PasswordFileError(Exception):
    """The password file cannot be read or created; ``str()`` names the path."""


def password_file(offset_storage_file: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(offset_storage_file)), FILE_NAME)


def resolve(configured: str, offset_storage_file: str) -> tuple[str, str | None]:
    """``(password, generated file or None)``: the configured password, else the kept one,
    else a new one written with mode 0600. Raises :class:`PasswordFileError`."""
    if configured:
        return configured, None
    path = password_file(offset_storage_file)
    try:
        with open(path, encoding="utf-8") as f:
            kept = f.read().strip()
        if kept:
            return kept, path
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PasswordFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    password = secrets.token_urlsafe(GENERATED_BYTES)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # an existing leftover tmp file keeps its old mode otherwise
        os.replace(tmp, path)
    except OSError as exc:
        raise PasswordFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    return password, path
