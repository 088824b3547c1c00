"""The generic upsert trigger on a real PostgreSQL, in the apply worker's session mode.

The apply worker runs with ``session_replication_role = replica`` and ``search_path = ''``;
a session set up the same way fires exactly the triggers the worker fires, so these tests
exercise the trigger as a subscriber would (the publisher tests cover the real worker).
"""

from __future__ import annotations

import psycopg2
import pytest

from electric.postgres import upsert

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS ups CASCADE;
CREATE SCHEMA ups;
CREATE TABLE ups.items (id uuid PRIMARY KEY, title text, qty int);
CREATE TABLE ups.pairs (a int, b text, val text, PRIMARY KEY (a, b));
CREATE TABLE ups.tags (a int, b text, PRIMARY KEY (a, b));
CREATE TABLE ups."Odd Table" ("Key" int PRIMARY KEY, "some col" text);
CREATE TABLE ups.full_pk (id int PRIMARY KEY, body text);
ALTER TABLE ups.full_pk REPLICA IDENTITY FULL;
CREATE TABLE ups.gen (id int PRIMARY KEY, n int, twice int GENERATED ALWAYS AS (n * 2) STORED);
CREATE TABLE ups.nopk (k text, v text);
"""

TABLES = [
    ("ups", "items"),
    ("ups", "pairs"),
    ("ups", "tags"),
    ("ups", "Odd Table"),
    ("ups", "full_pk"),
    ("ups", "gen"),
    ("ups", "nopk"),
]

U1 = "46ae8d74-ea44-4322-a4f3-9cd1b680a5bf"
U2 = "dab0679d-2c3b-4c3e-9d0a-1f0f0b7e9a11"


@pytest.fixture(scope="module")
def pg(pg_factory):
    return pg_factory("publisher")


@pytest.fixture
def conn(pg):
    pg.psql(SCHEMA_SQL, pg.database)
    c = psycopg2.connect(pg.dsn())
    c.autocommit = True
    assert upsert.install(c, TABLES) == len(TABLES)
    yield c
    c.close()


def replica(pg):
    """A session that behaves like the logical replication apply worker."""
    c = psycopg2.connect(pg.dsn())
    c.autocommit = True
    with c.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        cur.execute("SELECT pg_catalog.set_config('search_path', '', false)")
    return c


def rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def run(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.rowcount


def test_trigger_is_installed_for_replicas_only(conn):
    assert set(TABLES) <= upsert.installed_tables(conn)
    states = rows(
        conn, "SELECT DISTINCT tgenabled FROM pg_trigger WHERE tgname = 'electric_upsert'"
    )
    assert states == [("R",)]


def test_install_is_idempotent(conn):
    assert upsert.install(conn, TABLES) == len(TABLES)
    assert rows(conn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'electric_upsert'") == [
        (len(TABLES),)
    ]


def test_missing_table_is_skipped(conn):
    assert upsert.install(conn, [("ups", "items"), ("ups", "nope")]) == 1


def test_insert_of_existing_key_becomes_update(pg, conn):
    run(conn, "INSERT INTO ups.items VALUES (%s, 'local', 1)", (U1,))
    r = replica(pg)
    # INSERT 0 0: the trigger updated the row and skipped the insert, no duplicate-key error
    assert run(r, "INSERT INTO ups.items VALUES (%s, 'remote', NULL)", (U1,)) == 0
    assert rows(conn, "SELECT title, qty FROM ups.items") == [("remote", None)]


def test_insert_of_new_key_inserts(pg, conn):
    r = replica(pg)
    assert run(r, "INSERT INTO ups.items VALUES (%s, 'new', 3)", (U2,)) == 1
    assert rows(conn, "SELECT id::text, title, qty FROM ups.items") == [(U2, "new", 3)]


def test_same_new_key_twice_in_one_transaction_keeps_the_last(pg, conn):
    r = replica(pg)
    r.autocommit = False
    run(r, "INSERT INTO ups.items VALUES (%s, 'first', 1)", (U1,))
    run(r, "INSERT INTO ups.items VALUES (%s, 'second', 2)", (U1,))
    r.commit()
    assert rows(conn, "SELECT title, qty FROM ups.items") == [("second", 2)]


def test_local_sessions_keep_plain_insert_semantics(conn):
    run(conn, "INSERT INTO ups.items VALUES (%s, 'local', 1)", (U1,))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        run(conn, "INSERT INTO ups.items VALUES (%s, 'again', 2)", (U1,))


def test_composite_key(pg, conn):
    run(conn, "INSERT INTO ups.pairs VALUES (1, 'x', 'old')")
    r = replica(pg)
    run(r, "INSERT INTO ups.pairs VALUES (1, 'x', 'new')")
    run(r, "INSERT INTO ups.pairs VALUES (1, 'y', 'other')")
    assert rows(conn, "SELECT a, b, val FROM ups.pairs ORDER BY a, b") == [
        (1, "x", "new"),
        (1, "y", "other"),
    ]


def test_all_key_table_existing_row_is_a_noop(pg, conn):
    run(conn, "INSERT INTO ups.tags VALUES (1, 'x')")
    r = replica(pg)
    assert run(r, "INSERT INTO ups.tags VALUES (1, 'x')") == 0
    assert run(r, "INSERT INTO ups.tags VALUES (2, 'x')") == 1
    assert rows(conn, "SELECT a, b FROM ups.tags ORDER BY a") == [(1, "x"), (2, "x")]


def test_quoted_identifiers(pg, conn):
    run(conn, "INSERT INTO ups.\"Odd Table\" VALUES (1, 'a')")
    r = replica(pg)
    run(r, "INSERT INTO ups.\"Odd Table\" VALUES (1, 'b')")
    run(r, "INSERT INTO ups.\"Odd Table\" VALUES (2, 'c')")
    assert rows(conn, 'SELECT "Key", "some col" FROM ups."Odd Table" ORDER BY 1') == [
        (1, "b"),
        (2, "c"),
    ]


def test_replica_identity_full_with_pk(pg, conn):
    run(conn, "INSERT INTO ups.full_pk VALUES (1, 'a')")
    run(replica(pg), "INSERT INTO ups.full_pk VALUES (1, 'b')")
    assert rows(conn, "SELECT id, body FROM ups.full_pk") == [(1, "b")]


def test_generated_columns_are_recomputed(pg, conn):
    run(conn, "INSERT INTO ups.gen (id, n) VALUES (1, 1)")
    run(replica(pg), "INSERT INTO ups.gen (id, n) VALUES (1, 5)")
    assert rows(conn, "SELECT id, n, twice FROM ups.gen") == [(1, 5, 10)]


def test_table_without_pk_gets_plain_inserts(pg, conn):
    r = replica(pg)
    run(r, "INSERT INTO ups.nopk VALUES ('k', 'v')")
    run(r, "INSERT INTO ups.nopk VALUES ('k', 'v')")
    assert rows(conn, "SELECT count(*) FROM ups.nopk") == [(2,)]


def test_delete_by_key_then_reinsert(pg, conn):
    """Update-wins-over-delete: a later upsert of a deleted key brings the row back."""
    run(conn, "INSERT INTO ups.items VALUES (%s, 'State1', 1)", (U1,))
    r = replica(pg)
    run(r, "DELETE FROM ups.items WHERE id = %s", (U1,))
    assert run(r, "DELETE FROM ups.items WHERE id = %s", (U1,)) == 0  # missing: no-op
    run(r, "INSERT INTO ups.items VALUES (%s, 'State2', 1)", (U1,))
    assert rows(conn, "SELECT title FROM ups.items") == [("State2",)]


def test_sql_quotes_identifiers():
    assert upsert.quote_ident('a"b') == '"a""b"'
    sql = upsert.trigger_sql(("my schema", 'T"x'))
    assert 'ON "my schema"."T""x"' in sql
    assert "ENABLE REPLICA TRIGGER" in sql
    with pytest.raises(ValueError):
        upsert.quote_ident("a\0b")
