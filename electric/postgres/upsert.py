"""Upserts on a stock Postgres subscriber: a generic replica-only ``BEFORE INSERT`` trigger.

Why this exists
---------------
Rows Electric rebuilds from the log are *upserts*: the merged state of a row, which the
receiving Postgres may or may not have yet. A stock PostgreSQL 14+ subscriber cannot apply
that on its own (postgres15-subscriber.md §3): an ``UPDATE`` of a missing row is skipped
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
  time, idempotently) the row trigger ``electric_upsert``::

      CREATE OR REPLACE TRIGGER electric_upsert BEFORE INSERT ON <table>
          FOR EACH ROW EXECUTE FUNCTION electric.replication_upsert();
      ALTER TABLE <table> ENABLE REPLICA TRIGGER electric_upsert;

  ``electric.replication_upsert()`` looks up the table's primary key in the catalog, tries
  ``UPDATE <table> SET <every non-key column> = NEW.<column> WHERE <key> = NEW.<key>``; when
  that finds the row it returns NULL, so Postgres skips the INSERT (no duplicate-key error);
  otherwise it returns NEW and the INSERT goes ahead. A table whose columns are all key
  columns gets an existence check (``SELECT … FOR UPDATE``) instead; a table without a
  primary key falls through to a plain INSERT (Electric does not replicate such tables).

Why a *replica* trigger: ``ENABLE REPLICA`` triggers fire only in sessions with
``session_replication_role = replica``, which is what the logical replication apply worker
runs as. Local applications keep ordinary INSERT semantics (a duplicate key still fails for
them); a plain ``ENABLE`` trigger would not fire in the apply worker at all.

Why it is loop-free: every change the apply worker makes, the trigger's UPDATE included,
carries the subscription's replication origin, so the subscriber's own pgoutput marks it
with an Origin message and Electric's ingest drops it instead of writing it back to the log.

Why everything is schema-qualified: the apply worker runs with ``search_path = ''``.

Generated columns are left out of the SET list (Postgres computes them). Columns Electric
does not know about keep their local values only if Electric never sends them, which is why
the publisher always sends every column of the table as the registry describes it.

Race with local writers: a local session may insert the same key between the trigger's
UPDATE (no row) and the apply worker's INSERT; the apply then fails once with a duplicate
key, Postgres restarts the worker, and the retried INSERT becomes an update. It heals itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loguru import logger

from electric.changes import RelationName

FUNCTION_SCHEMA = "electric"
FUNCTION_NAME = "replication_upsert"
TRIGGER_NAME = "electric_upsert"

__all__ = [
    "FUNCTION_SCHEMA",
    "FUNCTION_NAME",
    "TRIGGER_NAME",
    "quote_ident",
    "function_sql",
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
    """``CREATE OR REPLACE FUNCTION <schema>.replication_upsert()`` (generic, any table)."""
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


def trigger_sql(relation: RelationName, schema: str = FUNCTION_SCHEMA) -> str:
    """Attach the upsert trigger to one table and enable it for the apply worker only."""
    table = f"{quote_ident(relation[0])}.{quote_ident(relation[1])}"
    fn = f"{quote_ident(schema)}.{quote_ident(FUNCTION_NAME)}"
    trigger = quote_ident(TRIGGER_NAME)
    return (
        f"CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}();\n"
        f"ALTER TABLE {table} ENABLE REPLICA TRIGGER {trigger};\n"
    )


def install(conn: Any, relations: Iterable[RelationName], schema: str = FUNCTION_SCHEMA) -> int:
    """Create the function and the trigger on every relation, in one transaction. Idempotent.

    ``conn`` is a psycopg2 connection to the subscriber database (not a replication one).
    Returns the number of tables set up. Tables that do not exist locally are skipped with a
    warning: the subscription's REFRESH would fail on them anyway, with a clearer message.
    """
    relations = [tuple(r) for r in relations]
    autocommit = conn.autocommit
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            cur.execute(function_sql(schema))
            done = 0
            for rel in relations:
                cur.execute(
                    "SELECT c.oid FROM pg_catalog.pg_class c "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                    rel,
                )
                if cur.fetchone() is None:
                    logger.warning("upsert trigger: table {}.{} not found, skipped", *rel)
                    continue
                cur.execute(trigger_sql(rel, schema))
                done += 1
        conn.commit()
        return done
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = autocommit


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
