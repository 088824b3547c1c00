"""``electric [settings] verify``: do the connected Postgres databases hold the same rows?

For every table that more than one connector replicates (same schema and name, with a
primary key), each Postgres computes over the columns all of them have: the row count and
an order-independent 64-bit checksum (the XOR of each row's md5, cut to 64 bits). Equal
counts and checksums on every side mean the table converged; anything else is printed with
each side's figures. Run it when replication is idle (lag 0), or differences in flight show.

Exit codes: 0 every shared table is equal, 1 some differ (or a Postgres could not be read),
2 bad settings.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import psycopg2
from psycopg2 import sql

from electric.changes import RelationName

_TABLES_SQL = """
SELECT n.nspname, c.relname, a.attname
  FROM pg_catalog.pg_publication_tables t
  JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE t.pubname = %s AND n.nspname <> 'electric' AND a.attgenerated = ''
   AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
"""


@dataclass(frozen=True)
class Figures:
    rows: int
    checksum: int


def published_columns(conn: Any, publication: str) -> dict[RelationName, set[str]]:
    with conn.cursor() as cur:
        cur.execute(_TABLES_SQL, (publication,))
        out: dict[RelationName, set[str]] = {}
        for schema, table, column in cur.fetchall():
            out.setdefault((schema, table), set()).add(column)
    return out


def table_figures(conn: Any, relation: RelationName, columns: list[str]) -> Figures:
    row_text = sql.SQL("row({})::text").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns))
    query = sql.SQL(
        "SELECT count(*), coalesce(bit_xor(('x' || substr(md5({}), 1, 16))::bit(64)::bigint), 0)"
        " FROM ONLY {}").format(row_text, sql.Identifier(*relation))
    with conn.cursor() as cur:
        cur.execute(query)
        rows, checksum = cur.fetchone()
    return Figures(rows, checksum)


def compare(conns: dict[str, Any], publication: str) -> list[tuple[RelationName, dict]]:
    """Per shared table: ``{connector: Figures}`` (sorted by table)."""
    columns = {name: published_columns(conn, publication) for name, conn in conns.items()}
    shared: dict[RelationName, list[str]] = {}
    for relation in sorted(set().union(*(c.keys() for c in columns.values()))):
        having = [name for name in conns if relation in columns[name]]
        if len(having) > 1:
            common = set.intersection(*(columns[name][relation] for name in having))
            shared[relation] = sorted(common)
    out = []
    for relation, cols in shared.items():
        figures = {name: table_figures(conn, relation, cols) for name, conn in conns.items()
                   if relation in columns[name]}
        out.append((relation, figures))
    return out


def main(argv: list[str]) -> int:
    from electric import config
    from electric.postgres.connector import Unreachable, connect_all

    settings = config.load_for_command(argv)
    if len(settings.connectors) < 2:
        print("electric verify: needs at least two CONNECTORS to compare", file=sys.stderr)
        return 2
    try:
        conns = connect_all(settings.connectors)
    except Unreachable as exc:
        print(str(exc))
        return 1
    try:
        results = compare(conns, settings.postgres_publication)
    except psycopg2.Error as exc:
        print(f"electric verify: {str(exc).strip()}")
        return 1
    finally:
        for conn in conns.values():
            conn.close()
    differ = 0
    for (schema, table), figures in results:
        values = set(figures.values())
        if len(values) == 1:
            rows = next(iter(values)).rows
            print(f"{schema}.{table}: equal ({rows} rows on {len(figures)} connectors)")
        else:
            differ += 1
            sides = ", ".join(f"{name} {f.rows} rows checksum {f.checksum & 0xFFFFFFFFFFFFFFFF:016x}"
                              for name, f in sorted(figures.items()))
            print(f"{schema}.{table}: DIFFERS: {sides}")
    print(f"{len(results)} shared tables, {differ} differ")
    return 1 if differ else 0
