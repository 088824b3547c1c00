"""Connector provisioning: make a source Postgres ready to replicate, idempotently.

What :func:`provision` does on an ordinary (autocommit) connection, in order:

1. check ``wal_level = logical`` (a clear error otherwise, instead of a cryptic slot failure);
2. create schema ``electric`` and table ``electric.migrations`` if missing, seeded with the
   initial version like the reference's dev databases (serialised with an advisory lock so
   two Electric instances starting together do not trip over each other);
3. create the publication (``FOR ALL TABLES``) when absent; when present, verify it publishes
   inserts, updates and deletes and say so when it does not;
4. create the logical replication slot (``pgoutput``) when absent; when present, verify it is
   a logical pgoutput slot of this database (a clear :class:`ProvisionError` otherwise);
5. read the published tables: columns in ``attnum`` order (generated columns excluded, PG15
   column lists honoured), type names from ``pg_type`` (user/extension types become ``text``,
   see ``types.py``), replica identity, primary keys **in key order**. Tables without a primary
   key are reported by name and left out; tables of the ``electric`` schema are bookkeeping
   and left out;
6. give every replicated table with the default replica identity ``REPLICA IDENTITY FULL``
   (:func:`ensure_full_identity`): updates then carry their old row, from which the store
   takes the columns an update really changed, so concurrent updates of different columns on
   two Postgres both survive. A table Electric may not alter keeps whole-row updates (one
   WARNING with the command to run);
7. read the migration history.

Subscription management (CREATE / ENABLE / REFRESH) belongs to the publisher side and is kept
in separate functions so the caller can order it after the publisher is listening.

All SQL uses ordinary connections (``pg_create_logical_replication_slot`` rather than the
walsender command), so psycopg2's normal, cooperative query path applies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
from loguru import logger
from psycopg2 import sql

from electric.changes import Column, RelationName, Table
from electric.postgres.types import replicated_type
from electric.schema import Migration, SchemaRegistry

ELECTRIC_SCHEMA = "electric"
# Arbitrary constant key for pg_advisory_xact_lock: "electric" in ASCII, truncated to int64.
_ADVISORY_KEY = 0x656C656374726963

MIGRATIONS_DDL = """
CREATE SCHEMA IF NOT EXISTS electric;
CREATE TABLE IF NOT EXISTS electric.migrations (
    id SERIAL PRIMARY KEY,
    version VARCHAR(64) NOT NULL UNIQUE,
    hash VARCHAR(64) NOT NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
);
"""


class ProvisionError(Exception):
    """The source Postgres is set up in a way Electric cannot work with (needs an operator)."""


@dataclass
class ProvisionResult:
    tables: list[Table]  # replicated tables; ``oid`` is the source table OID
    tables_without_pk: list[RelationName]
    migrations: list[Migration]
    encoding: str  # Python codec for the database encoding (pgoutput sends text in it)
    server_version: int
    created: list[str] = field(default_factory=list)  # what this run created, for the log
    slot_exists: bool = True  # False only when asked not to create it (initial sync does)


@contextmanager
def _transaction(conn: Any) -> Iterator[Any]:
    """An explicit transaction on an autocommit connection."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            yield cur
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except psycopg2.Error:
                pass
            raise
        cur.execute("COMMIT")


def _one(conn: Any, query: Any, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()


def _all(conn: Any, query: Any, params: Any = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def check_wal_level(conn: Any) -> None:
    (level,) = _one(conn, "SHOW wal_level")
    if level != "logical":
        raise ProvisionError(
            f"wal_level is {level!r} but logical replication needs wal_level = logical "
            "(set it in postgresql.conf and restart Postgres)"
        )


def ensure_electric_schema(conn: Any) -> bool:
    """Create ``electric.migrations`` (seeded) if missing. True when it was created."""
    with _transaction(conn) as cur:
        cur.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
        cur.execute("SELECT pg_catalog.to_regclass('electric.migrations') IS NULL")
        (missing,) = cur.fetchone()
        if missing:
            cur.execute(MIGRATIONS_DDL)
            cur.execute(
                "INSERT INTO electric.migrations (version, hash) VALUES ('1', 'initial') "
                "ON CONFLICT (version) DO NOTHING"
            )
    return bool(missing)


def ensure_publication(conn: Any, publication: str) -> bool:
    """Create the publication ``FOR ALL TABLES`` when absent. True when it was created."""
    row = _one(
        conn,
        "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate "
        "FROM pg_catalog.pg_publication WHERE pubname = %s",
        (publication,),
    )
    if row is None:
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(
                        sql.Identifier(publication)
                    )
                )
            return True
        except psycopg2.errors.DuplicateObject:
            return ensure_publication(conn, publication)  # created concurrently: verify it
    all_tables, ins, upd, dele, trunc = row
    missing = [op for op, on in (("insert", ins), ("update", upd), ("delete", dele)) if not on]
    log = logger.bind(publication=publication)
    if missing:
        log.warning(
            "publication {} does not publish {}: those changes will not replicate",
            publication,
            ", ".join(missing),
        )
    if not all_tables:
        log.info("publication {} lists its tables explicitly; only those replicate", publication)
    return False


def ensure_slot(conn: Any, slot: str, create: bool = True) -> bool:
    """Create the logical ``pgoutput`` slot when absent (unless ``create`` is false), verify
    it otherwise. True when it was absent."""
    row = _one(
        conn,
        "SELECT slot_type, plugin, database, pg_catalog.current_database() "
        "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    if row is None:
        if not create:
            return True
        try:
            _one(
                conn,
                "SELECT pg_catalog.pg_create_logical_replication_slot(%s, 'pgoutput')",
                (slot,),
            )
            return True
        except psycopg2.errors.DuplicateObject:
            return ensure_slot(conn, slot)
    slot_type, plugin, database, current = row
    if slot_type != "logical" or plugin != "pgoutput" or database != current:
        raise ProvisionError(
            f'replication slot "{slot}" exists but is a {slot_type} slot'
            f"{f' for plugin {plugin}' if plugin else ''}"
            f"{f' in database {database}' if database else ''}; Electric needs a logical "
            f"pgoutput slot in database {current} (drop it or configure another slot name)"
        )
    return False


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident, {attnames}
  FROM pg_catalog.pg_publication_tables t
  JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
 WHERE t.pubname = %s
 ORDER BY n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid, ty.typname, a.atttypmod, a.attnotnull,
       i.indexrelid IS NOT NULL AS has_identity_index,
       COALESCE(a.attnum = ANY(i.indkey), false) AS in_identity_index
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_index i
         ON i.indexrelid = pg_catalog.pg_get_replica_identity_index(a.attrelid)
 WHERE a.attrelid = ANY(%s::pg_catalog.oid[])
   AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
 ORDER BY a.attrelid, a.attnum
"""

# unnest ... WITH ORDINALITY keeps the key order of composite primary keys (the reference's
# query had no ORDER BY, so row keys could differ between Postgres instances).
_PKS_SQL = """
SELECT i.indrelid, a.attname
  FROM pg_catalog.pg_index i
 CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indisprimary AND i.indrelid = ANY(%s::pg_catalog.oid[])
 ORDER BY i.indrelid, k.ord
"""


def read_tables(
    conn: Any, publication: str, *, origin: str | None = None, quiet: bool = False
) -> tuple[list[Table], list[RelationName]]:
    """Replicated tables of the publication, and the names of those left out for lack of a PK.

    ``quiet`` suppresses the per-table log lines (the caller reports what is new).
    """
    column_lists = conn.server_version >= 150000
    rows = _all(
        conn,
        _TABLES_SQL.format(attnames="t.attnames::text[]" if column_lists else "NULL::text[]"),
        (publication,),
    )
    rows = [r for r in rows if r[1] != ELECTRIC_SCHEMA]
    oids = [r[0] for r in rows]
    columns: dict[int, list[tuple]] = {}
    for row in _all(conn, _COLUMNS_SQL, (oids,)):
        columns.setdefault(row[0], []).append(row[1:])
    pks: dict[int, list[str]] = {}
    for relid, name in _all(conn, _PKS_SQL, (oids,)):
        pks.setdefault(relid, []).append(name)

    log = logger.bind(origin=origin) if origin else logger
    tables: list[Table] = []
    without_pk: list[RelationName] = []
    for oid, schema, name, identity, attnames in rows:
        if oid not in pks:
            without_pk.append((schema, name))
            if quiet:
                continue
            log.warning(
                "table {}.{} has no primary key: it is not replicated (add a primary key, "
                "then restart or migrate){}",
                schema,
                name,
                _identity_hint(identity),
            )
            continue
        published = set(attnames) if attnames is not None else None
        cols = []
        for attname, typoid, typname, typmod, notnull, has_index, in_index in columns.get(oid, []):
            if published is not None and attname not in published:
                continue
            type_name, type_oid, type_mod = replicated_type(typoid, typname, typmod)
            if type_oid != typoid and not quiet:
                log.info(
                    "column {}.{}.{} of type {} replicates as text", schema, name, attname, typname
                )
            cols.append(
                Column(
                    name=attname,
                    type_name=type_name,
                    type_oid=type_oid,
                    type_modifier=type_mod,
                    nullable=not notnull,
                    # Without an identity index (FULL/NOTHING) every column counts as key,
                    # the rule the reference's Relation messages followed.
                    part_of_identity=bool(in_index) if has_index else True,
                )
            )
        identity = identity.decode() if isinstance(identity, bytes) else str(identity)
        tables.append(Table(schema, name, oid, tuple(cols), tuple(pks[oid]), identity))
    return tables, without_pk


def _identity_hint(identity: Any) -> str:
    identity = identity.decode() if isinstance(identity, bytes) else str(identity)
    if identity in ("d", "n"):
        # Postgres refuses UPDATE/DELETE on a published table without replica identity.
        return (
            "; note that Postgres rejects UPDATE and DELETE on it while it is published "
            "without a replica identity (REPLICA IDENTITY FULL allows them)"
        )
    return ""


_identity_warned: set[tuple[str | None, RelationName]] = set()


def ensure_full_identity(conn: Any, tables: list[Table], *, origin: str | None = None
                         ) -> list[Table]:
    """``ALTER TABLE … REPLICA IDENTITY FULL`` on tables with the default identity; returns
    the tables as they are now. (``NOTHING``/``INDEX`` identities were chosen by someone and
    are left alone.) Costs the source some WAL per updated or deleted row: the old row."""
    log = logger.bind(origin=origin) if origin else logger
    out = []
    for table in tables:
        if table.replica_identity != "d":
            out.append(table)
            continue
        name = sql.Identifier(table.schema, table.name)
        try:
            _one_statement(conn, sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(name))
        except psycopg2.errors.InsufficientPrivilege as exc:
            key = (origin, table.relation)
            if key not in _identity_warned:
                _identity_warned.add(key)
                log.warning(
                    "cannot set REPLICA IDENTITY FULL on {}.{} ({}): concurrent updates of "
                    "different columns of it are merged whole-row; run ALTER TABLE {}.{} "
                    "REPLICA IDENTITY FULL as its owner",
                    table.schema, table.name, str(exc).strip(), table.schema, table.name)
            out.append(table)
            continue
        log.info("set REPLICA IDENTITY FULL on {}.{} (per-column merge of updates)",
                 table.schema, table.name)
        out.append(replace(table, replica_identity="f"))
    return out


def _one_statement(conn: Any, statement: Any) -> None:
    with conn.cursor() as cur:
        cur.execute(statement)


def read_migrations(conn: Any) -> list[Migration]:
    """Migration history, newest first."""
    rows = _all(
        conn,
        "SELECT version, hash, applied_at FROM electric.migrations "
        "ORDER BY applied_at DESC, id DESC",
    )
    return [Migration(vsn=v, hash=h, applied_at=at) for v, h, at in rows]


_warned_search_path: set[str | None] = set()


def warn_search_path(conn: Any, origin: str | None = None) -> None:
    """Warn when unqualified tables would be created in the bookkeeping schema.

    With the default ``search_path = "$user", public`` and a role named ``electric``, creating
    schema ``electric`` silently makes it the default schema for that role's new tables, and
    changes to those are never replicated.
    """
    (schemas,) = _one(conn, "SELECT pg_catalog.current_schemas(false)::text[]")
    if schemas and schemas[0] == ELECTRIC_SCHEMA and origin not in _warned_search_path:
        _warned_search_path.add(origin)  # once per connector: provisioning re-runs often
        log = logger.bind(origin=origin) if origin else logger
        log.warning(
            "the default schema of this role is '{}' (search_path \"$user\"): unqualified "
            "CREATE TABLE lands in Electric's bookkeeping schema and does not replicate; "
            "qualify table names or ALTER ROLE ... SET search_path = public (Electric's own "
            "migration sessions already leave its schema out)",
            ELECTRIC_SCHEMA,
        )


def python_encoding(conn: Any) -> str:
    (name,) = _one(conn, "SHOW server_encoding")
    if name == "SQL_ASCII":  # "no encoding": bytes are whatever clients wrote; UTF-8 is usual
        return "utf-8"
    return ext.encodings.get(name, "utf-8")


def provision(
    conn: Any, *, publication: str, slot: str, origin: str | None = None,
    create_slot: bool = True,
) -> ProvisionResult:
    """Run the whole provisioning sequence (see the module docstring). Idempotent.

    With ``create_slot`` false a missing slot is left to the caller (initial sync creates
    it with a snapshot) and reported as ``slot_exists = False``."""
    if not conn.autocommit:
        conn.autocommit = True
    check_wal_level(conn)
    created = []
    if ensure_electric_schema(conn):
        created.append("schema electric")
    if ensure_publication(conn, publication):
        created.append(f"publication {publication}")
    slot_absent = ensure_slot(conn, slot, create=create_slot)
    if slot_absent and create_slot:
        created.append(f"slot {slot}")
    tables, without_pk = read_tables(conn, publication, origin=origin)
    tables = ensure_full_identity(conn, tables, origin=origin)
    warn_search_path(conn, origin)
    return ProvisionResult(
        tables=tables,
        tables_without_pk=without_pk,
        migrations=read_migrations(conn),
        encoding=python_encoding(conn),
        server_version=conn.server_version,
        created=created,
        slot_exists=not (slot_absent and not create_slot),
    )


def register(
    registry: SchemaRegistry, origin: str, publication: str, result: ProvisionResult
) -> list[Table]:
    """Put the provisioned tables and migration history into the registry."""
    registered = registry.put_tables(publication, result.tables)
    registry.put_migrations(origin, result.migrations)
    return registered


# -- subscription side (ordered by the publisher / app, not by provision()) -----------------


def create_subscription(conn: Any, name: str, conninfo: str, publication: str) -> bool:
    """``CREATE SUBSCRIPTION … WITH (connect = false)`` when absent. True when created.

    An existing subscription is brought up to date instead: a stale connection string
    (Electric moved) or publication is altered, so the caller never has to look again.

    ``connect = false`` implies ``enabled = false, create_slot = false, copy_data = false`` and
    slot name = subscription name; enable it with :func:`enable_subscription` once Electric's
    publisher is accepting connections.
    """
    if not conn.autocommit:
        conn.autocommit = True
    row = _one(
        conn,
        "SELECT subconninfo, subpublications FROM pg_catalog.pg_subscription s "
        "JOIN pg_catalog.pg_database d ON d.oid = s.subdbid "
        "WHERE s.subname = %s AND d.datname = pg_catalog.current_database()",
        (name,),
    )
    if row is not None:
        existing_conninfo, publications = row
        log = logger.bind(origin=name)
        with conn.cursor() as cur:
            if existing_conninfo != conninfo:
                cur.execute(sql.SQL("ALTER SUBSCRIPTION {} CONNECTION {}").format(
                    sql.Identifier(name), sql.Literal(conninfo)))
                # Without the password: logs must never carry secrets.
                shown = {k: v for k, v in ext.parse_dsn(conninfo).items()
                         if k != "password"}
                log.info("subscription {} now points at {}", name,
                         ext.make_dsn(**shown))
            if list(publications or []) != [publication]:
                cur.execute(sql.SQL(
                    "ALTER SUBSCRIPTION {} SET PUBLICATION {} WITH (refresh = false)").format(
                    sql.Identifier(name), sql.Identifier(publication)))
                log.info("subscription {} now uses publication {}", name, publication)
        return False
    query = sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (connect = false)")
    try:
        with conn.cursor() as cur:
            cur.execute(
                query.format(
                    sql.Identifier(name), sql.Literal(conninfo), sql.Identifier(publication)
                )
            )
    except psycopg2.errors.DuplicateObject:
        return False
    return True


def enable_subscription(conn: Any, name: str) -> None:
    if not conn.autocommit:
        conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(name)))


def refresh_subscription(conn: Any, name: str) -> None:
    """``REFRESH PUBLICATION WITH (copy_data = false)``; Postgres refuses it while disabled."""
    if not conn.autocommit:
        conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = false)").format(
                sql.Identifier(name)
            )
        )
