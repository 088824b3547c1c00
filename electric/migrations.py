"""Applying a named migration to one Postgres, all or nothing.

A migration ``vsn`` lives in ``MIGRATIONS_DIR + vsn + MIGRATIONS_FILE_NAME_SUFFIX`` (by default
``<dir>/<vsn>/postgres.sql``). Its hash is the upper-case MD5 hex of the file. The whole file
runs in one transaction together with the bookkeeping row in ``electric.migrations``, whatever
statements it holds; any failure rolls everything back and leaves the schema as it was.

Errors are ``MigrationError`` with an HTTP status and a short machine code, so the API and the
CLI can report them the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2

from electric.postgres import green
from electric.schema import Migration

# electric.migrations.version is VARCHAR(64). Dashes are allowed (generated names such as
# 20221110_create-items use them); a leading dash is not (it reads as a flag on a command
# line), nor dots or slashes (the name is a folder under MIGRATIONS_DIR).
VSN_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")


class MigrationError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class MigrationFile:
    vsn: str
    path: str
    sql: str
    hash: str


def check_vsn(vsn: object) -> str:
    if not isinstance(vsn, str) or not VSN_PATTERN.match(vsn):
        raise MigrationError(400, "invalid_vsn",
                             "vsn must be 1-64 letters, digits, underscores and dashes "
                             "(not starting with a dash)")
    return vsn


def read_migration(migrations_dir: str, suffix: str, vsn: str) -> MigrationFile:
    check_vsn(vsn)
    path = os.path.normpath(os.path.join(migrations_dir, vsn) + suffix)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise MigrationError(404, "vsn_not_found", f"no migration file at {path}") from None
    except OSError as exc:
        raise MigrationError(500, "unreadable", f"cannot read {path}: {exc.strerror}") from None
    try:
        sql = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MigrationError(400, "invalid_file", f"{path} is not UTF-8 text") from None
    if not sql.strip():
        raise MigrationError(400, "invalid_file", f"{path} is empty")
    return MigrationFile(vsn, path, sql, hashlib.md5(raw).hexdigest().upper())


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def apply(dsn: str, migration: MigrationFile) -> Migration:
    """Run the migration and record it, in one transaction. Raises MigrationError."""
    # Green connect: yields while connecting and honours connect_timeout under gevent.
    conn = green.connect(dsn)
    try:
        with conn.cursor() as cur:
            # Serialise concurrent migrations of this database, even from other Electrics.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('electric.migrations'))")
            cur.execute("SELECT hash FROM electric.migrations WHERE version = %s",
                        (migration.vsn,))
            row = cur.fetchone()
            if row is not None:
                conn.rollback()
                if row[0] == migration.hash:
                    raise MigrationError(409, "already_migrated",
                                         f"version {migration.vsn} is already applied")
                raise MigrationError(
                    409, "already_migrated_bad_md5",
                    f"version {migration.vsn} was applied with hash {row[0]}, "
                    f"the file now hashes to {migration.hash}")
            # A role named "electric" would otherwise find Electric's own schema first in
            # its search_path ("$user"), and an unqualified CREATE TABLE would land there,
            # silently outside replication.
            cur.execute("SELECT string_agg(quote_ident(s), ', ') FROM"
                        " unnest(current_schemas(false)) AS s WHERE s <> 'electric'")
            path = cur.fetchone()[0] or "public"
            cur.execute(f"SET LOCAL search_path TO {path}")
            try:
                cur.execute(migration.sql)
            except psycopg2.Error as exc:
                conn.rollback()
                detail = (exc.pgerror or str(exc)).strip()
                raise MigrationError(500, "migration_failed",
                                     f"migration {migration.vsn} failed and was rolled back: "
                                     f"{detail}") from None
            cur.execute("INSERT INTO electric.migrations (version, hash) VALUES (%s, %s)"
                        " RETURNING applied_at", (migration.vsn, migration.hash))
            applied_at = cur.fetchone()[0]
        conn.commit()
        return Migration(migration.vsn, migration.hash, _utc(applied_at))
    finally:
        conn.close()


def as_json(origin: str, migration: Migration | None) -> dict | str:
    """The reference's JSON shape for one connector's latest migration."""
    if migration is None:
        return "unknown"
    applied = migration.applied_at
    text = None
    if applied is not None:
        text = applied.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        if applied.microsecond:
            text += f".{applied.microsecond:06d}".rstrip("0")
        text += "Z"
    return {"applied_at": text, "hash": migration.hash, "origin": origin, "vsn": migration.vsn}
