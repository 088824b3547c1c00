"""Upserts on a stock Postgres subscriber: a per-table replica-only ``BEFORE INSERT`` trigger.

Why this exists
---------------
Rows Electric rebuilds from the log are *upserts*: the merged state of a row, which the
receiving Postgres may or may not have yet. A stock PostgreSQL 14+ subscriber cannot apply
that on its own (docs/protocols.md §2.6): an ``UPDATE`` of a missing row is skipped
silently (data loss), and an ``INSERT`` of an existing key fails with a duplicate-key error
that blocks the subscription in a retry loop.

The contract (what Electric sends, what the subscriber runs)
------------------------------------------------------------
* **Every upsert is sent as an INSERT** (pgoutput ``I`` with all columns of the table), never
  as an ``UPDATE``.
* **Deletes are sent as DELETE by key** (``D`` with the full old row when the log has it, else
  the primary-key columns); the subscriber finds the row through its primary key. A delete of
  a row that is not there is a silent no-op, which is the right outcome.
* Primary-key columns are flagged as key in the Relation message (every column for tables with
  ``REPLICA IDENTITY FULL``), so the subscriber accepts deletes for the table.
* On every replicated table of every connected Postgres, Electric installs (at subscription
  time and again after every migration, idempotently) the row trigger ``electric_upsert``
  with a function of that table's own, ``electric.upsert_<table oid>``::

      CREATE OR REPLACE TRIGGER electric_upsert BEFORE INSERT ON <table>
          FOR EACH ROW EXECUTE FUNCTION electric.upsert_<oid>();
      ALTER TABLE <table> ENABLE REPLICA TRIGGER electric_upsert;

  The function is generated from the catalog with fixed SQL::

      UPDATE <schema>.<table> t SET <c> = NEW.<c>, … WHERE t.<key> = NEW.<key> AND …;
      IF FOUND THEN RETURN NULL; END IF;   -- existed, now updated: skip the INSERT
      RETURN NEW;                          -- new key: let the INSERT happen

  so no duplicate-key error ever reaches the apply worker. The SET list is every non-key,
  non-generated column (Postgres computes generated ones). A table whose columns are all
  key columns gets an existence check (``PERFORM 1 … FOR UPDATE``) instead; a table without
  a primary key gets ``RETURN NEW`` (plain INSERT; Electric does not replicate such tables).

Why per-table functions: fixed SQL is planned once per session; the generic
``electric.replication_upsert()`` (still installed: the fallback below) looks up the key in
the catalog and runs ``EXECUTE`` per row, ~105 µs against ~2 µs per row on the apply worker
(``python -m bench --only trigger``; 10 x 1,000 rows catch-up 1.3 s -> 0.3 s). The oid makes
the name unique and safe for any table name and stable across renames.

Keeping the baked-in column list current: a stale list would be wrong both ways: an
upsert carrying a column added later would keep the old local value (silent data loss), and
a dropped or renamed column would make every upsert fail. So the function is regenerated

* by every :func:`install` (subscription time, and after each migration through the
  migrations API: ``_MigrationTarget.resume`` → ``subscribe`` → ``install``), and
* by a DDL event trigger (``electric_upsert_refresh``, on ``ALTER TABLE`` and ``ALTER
  SCHEMA``) inside the altering transaction, which covers DDL run outside Electric's
  migrations: by the time the connector re-reads the changed table and sends the new column,
  the subscriber's function already sets it. The generator lives in the database
  (``electric.upsert_function(oid)``) for that reason.

Event triggers can only be created by a superuser. Without that right (or with
``install(static=False)``) every table gets the generic function instead: slower, but it
reads the catalog on every row, so it can never be stale. A table *created* outside
Electric's migrations gets no trigger until the next install, as before. Functions whose
table is gone are dropped by the next install.

Why a *replica* trigger: ``ENABLE REPLICA`` triggers fire only in sessions with
``session_replication_role = replica``, which is what the logical replication apply worker
runs as. Local applications keep ordinary INSERT semantics (a duplicate key still fails for
them); a plain ``ENABLE`` trigger would not fire in the apply worker at all.

Why it is loop-free: every change the apply worker makes, the trigger's UPDATE included,
carries the subscription's replication origin, so the subscriber's own pgoutput marks it
with an Origin message and Electric's ingest drops it instead of writing it back to the log.

Why everything is schema-qualified: the apply worker runs with ``search_path = ''``.

Columns Electric does not know about keep their local values only if Electric never sends
them, which is why the publisher always sends every column of the table as the registry
describes it.

Race with local writers: a local session may insert the same key between the trigger's
UPDATE (no row) and the apply worker's INSERT; the apply then fails once with a duplicate
key, Postgres restarts the worker, and the retried INSERT becomes an update. It heals itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg2.errors
from loguru import logger

from electric import errors
from electric.changes import RelationName

FUNCTION_SCHEMA = "electric"
FUNCTION_NAME = "replication_upsert"
TRIGGER_NAME = "electric_upsert"
STATIC_PREFIX = "upsert_"  # + the table's oid: unique, stable across renames, any name safe
GENERATOR_NAME = "upsert_function"
REFRESH_NAME = "upsert_refresh"

__all__ = [
    "FUNCTION_SCHEMA",
    "FUNCTION_NAME",
    "TRIGGER_NAME",
    "quote_ident",
    "STATIC_PREFIX",
    "function_sql",
    "generator_sql",
    "refresh_sql",
    "event_trigger_name",
    "trigger_sql",
    "install",
    "installed_tables",
]


def quote_ident(name: str) -> str:
    """Quote an SQL identifier the way Postgres' ``quote_ident`` would, always quoting."""
    if "\0" in name:
        raise ValueError(f"identifier contains NUL: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def function_sql(schema: str = FUNCTION_SCHEMA) -> str:
    """``CREATE OR REPLACE FUNCTION <schema>.replication_upsert()`` (generic, any table).

    The fallback when the per-table functions cannot be kept current (see the module doc).
    """
    fn = f"{quote_ident(schema)}.{quote_ident(FUNCTION_NAME)}"
    # $1 inside EXECUTE is NEW (passed with USING), so ($1).col reads a field of the row
    # without a jsonb round-trip. pg_catalog-qualified everywhere: search_path is ''.
    return f"""
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
LANGUAGE plpgsql AS $electric_upsert$
DECLARE
  pk_cols text[];
  other_cols text[];
  where_sql text;
  set_sql text;
  n bigint;
BEGIN
  SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.ord) INTO pk_cols
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
   WHERE i.indrelid = TG_RELID AND i.indisprimary;
  IF pk_cols IS NULL THEN
    RETURN NEW;  -- no primary key: nothing to match on, plain INSERT
  END IF;

  SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) INTO other_cols
    FROM pg_catalog.pg_attribute a
   WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped
     AND a.attgenerated = '' AND NOT (a.attname::text = ANY (pk_cols));

  SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = ($1).%1$I', c), ' AND ')
    INTO where_sql FROM pg_catalog.unnest(pk_cols) AS c;

  IF other_cols IS NULL THEN
    -- every column is part of the key: the row either exists (then nothing to change) or not
    EXECUTE pg_catalog.format('SELECT 1 FROM %I.%I t WHERE %s FOR UPDATE',
                              TG_TABLE_SCHEMA, TG_TABLE_NAME, where_sql) USING NEW;
  ELSE
    SELECT pg_catalog.string_agg(pg_catalog.format('%1$I = ($1).%1$I', c), ', ')
      INTO set_sql FROM pg_catalog.unnest(other_cols) AS c;
    EXECUTE pg_catalog.format('UPDATE %I.%I t SET %s WHERE %s',
                              TG_TABLE_SCHEMA, TG_TABLE_NAME, set_sql, where_sql) USING NEW;
  END IF;
  -- EXECUTE does not set FOUND; ROW_COUNT tells "row existed" from "new row".
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n > 0 THEN
    RETURN NULL;  -- existed and is now updated: skip the INSERT
  END IF;
  RETURN NEW;     -- new key: let the INSERT happen
END
$electric_upsert$
"""


def generator_sql(schema: str = FUNCTION_SCHEMA) -> str:
    """``<schema>.upsert_function(oid)``: (re)write one table's static upsert function.

    The generator lives in the database, not in Python, because the DDL event trigger
    (:func:`refresh_sql`) must regenerate functions without Electric being involved. It
    returns the function's qualified name, or NULL when ``rel`` is not a plain/partitioned
    table. SECURITY DEFINER: the event trigger runs it as whoever ran the ``ALTER TABLE``,
    who need not own Electric's schema.
    """
    s = quote_ident(schema)
    return f"""
CREATE OR REPLACE FUNCTION {s}.{quote_ident(GENERATOR_NAME)}(rel oid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $electric_gen$
DECLARE
  nsp text;
  tbl text;
  fn text;
  pk_cols text[];
  other_cols text[];
  where_sql text;
  body text;
BEGIN
  SELECT n.nspname, c.relname INTO nsp, tbl
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = rel AND c.relkind IN ('r', 'p');
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  fn := pg_catalog.format('%I.%I', {_sql_literal(schema)}, {_sql_literal(STATIC_PREFIX)} || rel);

  SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.ord) INTO pk_cols
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
   WHERE i.indrelid = rel AND i.indisprimary;
  SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) INTO other_cols
    FROM pg_catalog.pg_attribute a
   WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
     AND a.attgenerated = '' AND NOT (a.attname::text = ANY (coalesce(pk_cols, '{{}}')));

  IF pk_cols IS NULL THEN
    body := 'RETURN NEW;';  -- no primary key: nothing to match on, plain INSERT
  ELSE
    SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = NEW.%1$I', c), ' AND ')
      INTO where_sql FROM pg_catalog.unnest(pk_cols) AS c;
    IF other_cols IS NULL THEN
      -- every column is part of the key: the row either exists (nothing to change) or not
      body := pg_catalog.format('PERFORM 1 FROM %I.%I t WHERE %s FOR UPDATE;', nsp, tbl,
                                where_sql);
    ELSE
      body := pg_catalog.format(
        'UPDATE %I.%I t SET %s WHERE %s;', nsp, tbl,
        (SELECT pg_catalog.string_agg(pg_catalog.format('%1$I = NEW.%1$I', c), ', ')
           FROM pg_catalog.unnest(other_cols) AS c),
        where_sql);
    END IF;
    -- FOUND: the row existed (and is now updated), so skip the INSERT.
    body := body || E'\\n  IF FOUND THEN RETURN NULL; END IF;\\n  RETURN NEW;';
  END IF;
  -- use_variable: a column called "new" must not make NEW.x ambiguous.
  -- enable_seqscan off: the statement's plan is cached on first use, when the table may be
  -- empty or small and a sequential scan looks cheapest; one large transaction (a bulk load,
  -- an initial sync) then scans an ever larger table once per row. The key is indexed.
  EXECUTE pg_catalog.format(
    'CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SET enable_seqscan = off AS %L', fn,
    E'#variable_conflict use_variable\\n-- generated by Electric for '
      || pg_catalog.format('%I.%I', nsp, tbl)
      || E'; regenerated on ALTER TABLE\\nBEGIN\\n  ' || body || E'\\nEND');
  RETURN fn;
END
$electric_gen$;
-- SECURITY DEFINER: only Electric (and the event trigger) may run it.
REVOKE ALL ON FUNCTION {s}.{quote_ident(GENERATOR_NAME)}(oid) FROM PUBLIC;
"""


def refresh_sql(schema: str = FUNCTION_SCHEMA) -> str:
    """The DDL event trigger that keeps every static function's column list current.

    Fires at the end of ``ALTER TABLE`` (columns added, dropped, renamed, retyped; primary
    key changed; table renamed or moved) and ``ALTER SCHEMA`` (renamed) in ordinary sessions,
    inside the DDL's own transaction, and regenerates the function of each affected table
    that has the ``electric_upsert`` trigger. It only replaces functions (never ALTERs a
    table), so it cannot re-trigger itself. Event triggers need a superuser to create;
    :func:`install` falls back to the generic function when it cannot.
    """
    s = quote_ident(schema)
    fn = f"{s}.{quote_ident(REFRESH_NAME)}"
    gen = f"{s}.{quote_ident(GENERATOR_NAME)}"
    name = event_trigger_name(schema)
    trig = quote_ident(name)
    return f"""
CREATE OR REPLACE FUNCTION {fn}() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $electric_refresh$
DECLARE
  r oid;
BEGIN
  FOR r IN
    SELECT DISTINCT t.tgrelid
      FROM pg_catalog.pg_trigger t
     WHERE t.tgname = {_sql_literal(TRIGGER_NAME)}
       AND t.tgfoid = pg_catalog.to_regprocedure(
             pg_catalog.format('%I.%I()', {_sql_literal(schema)},
                               {_sql_literal(STATIC_PREFIX)} || t.tgrelid))
       AND (TG_TAG = 'ALTER SCHEMA' OR t.tgrelid IN (
             SELECT d.objid FROM pg_catalog.pg_event_trigger_ddl_commands() d
              WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass))
  LOOP
    PERFORM {gen}(r);
  END LOOP;
END
$electric_refresh$;
REVOKE ALL ON FUNCTION {fn}() FROM PUBLIC;
DO $electric_do$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = {_sql_literal(name)}) THEN
    CREATE EVENT TRIGGER {trig} ON ddl_command_end
      WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA') EXECUTE FUNCTION {fn}();
  END IF;
  ALTER EVENT TRIGGER {trig} ENABLE;  -- ORIGIN: ordinary sessions, not the apply worker
END
$electric_do$;
"""


def event_trigger_name(schema: str = FUNCTION_SCHEMA) -> str:
    """One event trigger per function schema (event trigger names are database-wide)."""
    return f"{schema}_upsert_refresh"


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def trigger_sql(
    relation: RelationName, schema: str = FUNCTION_SCHEMA, function: str | None = None
) -> str:
    """Attach the upsert trigger to one table and enable it for the apply worker only.

    ``function`` is the already quoted, qualified trigger function (a static per-table one
    from :func:`generator_sql`); the generic ``<schema>.replication_upsert`` by default.
    """
    table = f"{quote_ident(relation[0])}.{quote_ident(relation[1])}"
    fn = function or f"{quote_ident(schema)}.{quote_ident(FUNCTION_NAME)}"
    trigger = quote_ident(TRIGGER_NAME)
    return (
        f"CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}();\n"
        f"ALTER TABLE {table} ENABLE REPLICA TRIGGER {trigger};\n"
    )


class TablesMissing(errors.Permanent):
    """Replicated tables this Postgres does not have: their upsert trigger cannot be installed.
    Permanent in the sense of :mod:`electric.errors` (waiting alone does not create them);
    the set-up is still retried, since a migration or the next catalog re-read fixes it."""

    def __init__(self, relations: list[RelationName]):
        self.relations = list(relations)
        names = ", ".join(f"{s}.{t}" for s, t in self.relations)
        super().__init__(f"upsert trigger cannot be installed: table {names} not found")


def install(
    conn: Any,
    relations: Iterable[RelationName],
    schema: str = FUNCTION_SCHEMA,
    static: bool = True,
) -> int:
    """Set up the upsert trigger on every relation, in one transaction. Idempotent.

    ``conn`` is a psycopg2 connection to the subscriber database (not a replication one).
    Each table gets its own static function ``<schema>.upsert_<table oid>`` (re-generated on
    every call, so an install after a migration picks up new columns), unless ``static`` is
    false or the DDL event trigger that keeps those functions current cannot be created
    (not a superuser): then every table gets the generic ``replication_upsert()``, which is
    slower but never stale. Functions of tables that no longer exist are dropped.
    Returns the number of tables set up. A table that does not exist here raises
    :class:`TablesMissing` naming it, and nothing is installed (the transaction rolls back):
    an upsert for it could not be applied, so the subscription set-up is held at it and
    retried (``subscription.subscribe_when_ready``) rather than going on without it.
    """
    relations = [tuple(r) for r in relations]
    autocommit = conn.autocommit
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            cur.execute(function_sql(schema))
            if static:
                static = _install_static_machinery(cur, schema)
            done = 0
            missing = []
            for rel in relations:
                cur.execute(
                    "SELECT c.oid FROM pg_catalog.pg_class c "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                    rel,
                )
                row = cur.fetchone()
                if row is None:
                    missing.append(rel)
                    continue
                function = None
                if static:
                    cur.execute(
                        f"SELECT {quote_ident(schema)}.{quote_ident(GENERATOR_NAME)}(%s)", row
                    )
                    function = cur.fetchone()[0]
                cur.execute(trigger_sql(rel, schema, function))
                done += 1
            if missing:
                raise TablesMissing(missing)
            _drop_orphans(cur, schema)
        conn.commit()
        return done
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = autocommit


def _install_static_machinery(cur: Any, schema: str) -> bool:
    """Generator + DDL event trigger; False (and generic triggers) when not permitted."""
    cur.execute(generator_sql(schema))
    cur.execute("SAVEPOINT electric_event_trigger")
    try:
        cur.execute(refresh_sql(schema))
    except psycopg2.errors.InsufficientPrivilege:
        cur.execute("ROLLBACK TO SAVEPOINT electric_event_trigger")
        logger.warning(
            "upsert trigger: not allowed to create the DDL event trigger (needs a superuser);"
            " using the generic, slower upsert function on every table"
        )
        return False
    cur.execute("RELEASE SAVEPOINT electric_event_trigger")
    return True


def _drop_orphans(cur: Any, schema: str) -> None:
    """Drop static functions no trigger uses any more (their table was dropped, or the
    table went back to the generic function)."""
    cur.execute(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p "
        "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname ~ %s AND p.pronargs = 0 "
        "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid)",
        (schema, "^" + STATIC_PREFIX + "[0-9]+$"),
    )
    for (proc,) in cur.fetchall():
        cur.execute(f"DROP FUNCTION IF EXISTS {proc}")


def installed_tables(conn: Any) -> set[RelationName]:
    """Tables whose ``electric_upsert`` trigger exists and is enabled for replicas (``R``)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_trigger t "
            "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE t.tgname = %s AND t.tgenabled = 'R'",
            (TRIGGER_NAME,),
        )
        rows = cur.fetchall()
    if not conn.autocommit:
        conn.rollback()
    return {(s, t) for s, t in rows}
