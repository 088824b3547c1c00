"""Conflict semantics end to end (two stock Postgres 15, Electric as a process, embedded
store): concurrent updates of different columns keep both, TRUNCATE replicates as the
deletion of the rows present then, and a concurrent insert elsewhere survives it."""

from __future__ import annotations

import uuid

from tests.e2e.test_publisher_scenarios import (  # noqa: F401 - fixtures
    dbs,
    disable_subscription,
    pair,
    written,
)
from tests.support.postgres import query, wait_rows


def test_concurrent_updates_of_different_columns_keep_both(pair):  # noqa: F811
    electric, a, b, db = pair
    row = str(uuid.uuid4())
    # entries_default is created with the default replica identity; Electric made it FULL
    assert query(a, db, "SELECT relreplident FROM pg_class WHERE relname = 'entries_default'"
                 ) == [("f",)]
    query(a, db, "INSERT INTO entries_default (id, content, content_b) VALUES (%s, 'x0', 'y0')",
          (row,))
    wait_rows(b, db, "SELECT content, content_b FROM entries_default", [("x0", "y0")])
    disable_subscription(a, db, "pg_a")
    disable_subscription(b, db, "pg_b")
    before = {name: written(electric, name) for name in ("pg_a", "pg_b")}
    query(a, db, "UPDATE entries_default SET content = 'x from a' WHERE id = %s", (row,))
    query(b, db, "UPDATE entries_default SET content_b = 'y from b' WHERE id = %s", (row,))
    for name in ("pg_a", "pg_b"):
        electric.wait_for(lambda n=name: written(electric, n) > before[n],
                          what=f"{name}'s update in the store")
    query(a, db, "ALTER SUBSCRIPTION pg_a ENABLE")
    query(b, db, "ALTER SUBSCRIPTION pg_b ENABLE")
    for pg in (a, b):
        wait_rows(pg, db, "SELECT content, content_b FROM entries_default WHERE id = %s",
                  [("x from a", "y from b")], args=(row,))


def test_the_same_column_updated_on_both_sides_converges_to_the_later_write(pair):  # noqa: F811
    electric, a, b, db = pair
    row = str(uuid.uuid4())
    query(a, db, "INSERT INTO entries_default (id, content) VALUES (%s, 'v0')", (row,))
    wait_rows(b, db, "SELECT content FROM entries_default", [("v0",)])
    disable_subscription(a, db, "pg_a")
    disable_subscription(b, db, "pg_b")
    before = written(electric, "pg_a")
    query(a, db, "UPDATE entries_default SET content = 'first' WHERE id = %s", (row,))
    electric.wait_for(lambda: written(electric, "pg_a") > before, what="a's update stored")
    before = written(electric, "pg_b")
    query(b, db, "UPDATE entries_default SET content = 'second' WHERE id = %s", (row,))
    electric.wait_for(lambda: written(electric, "pg_b") > before, what="b's update stored")
    query(a, db, "ALTER SUBSCRIPTION pg_a ENABLE")
    query(b, db, "ALTER SUBSCRIPTION pg_b ENABLE")
    for pg in (a, b):
        wait_rows(pg, db, "SELECT content FROM entries_default WHERE id = %s", [("second",)],
                  args=(row,))


def test_truncate_replicates_and_a_concurrent_insert_elsewhere_survives(pair):  # noqa: F811
    electric, a, b, db = pair
    query(a, db, "INSERT INTO entries (id, content) SELECT gen_random_uuid(), 'r' || g "
                 "FROM generate_series(1, 50) g")
    wait_rows(b, db, "SELECT count(*) FROM entries", [(50,)])
    disable_subscription(b, db, "pg_b")
    before = written(electric, "pg_a")
    query(a, db, "TRUNCATE entries")
    electric.wait_for(lambda: written(electric, "pg_a") > before, what="the truncate stored")
    survivor = str(uuid.uuid4())
    query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'inserted on b')", (survivor,))
    wait_rows(a, db, "SELECT id::text, content FROM entries", [(survivor, "inserted on b")])
    query(b, db, "ALTER SUBSCRIPTION pg_b ENABLE")
    for pg in (a, b):
        wait_rows(pg, db, "SELECT id::text, content FROM entries",
                  [(survivor, "inserted on b")])


def test_verify_reports_equal_tables_then_the_one_that_differs(pair):  # noqa: F811
    import os
    import subprocess
    import sys

    from tests.support.electric import ROOT

    electric, a, b, db = pair
    query(a, db, "INSERT INTO entries (id, content) SELECT gen_random_uuid(), 'r' || g "
                 "FROM generate_series(1, 20) g")
    wait_rows(b, db, "SELECT count(*) FROM entries", [(20,)])
    env = {**os.environ, "PYTHONPATH": ROOT, "CONNECTORS": electric.env["CONNECTORS"]}

    def verify():
        return subprocess.run([sys.executable, "-m", "electric.cli", "verify"], env=env,
                              capture_output=True, text=True, timeout=60)

    done = verify()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "public.entries: equal (20 rows on 2 connectors)" in done.stdout
    disable_subscription(b, db, "pg_b")
    query(a, db, "UPDATE entries SET content = 'changed' WHERE content = 'r7'")
    done = verify()
    assert done.returncode == 1
    assert "public.entries: DIFFERS: pg_a 20 rows checksum" in done.stdout
    assert done.stdout.strip().endswith("differ")


def test_a_table_created_by_psql_after_start_replicates_with_its_earlier_rows(pair):  # noqa: F811
    electric, a, b, db = pair
    ddl = "CREATE TABLE public.later (id int PRIMARY KEY, v text)"
    query(a, db, ddl)
    query(a, db, "INSERT INTO later SELECT g, 'early ' || g FROM generate_series(1, 3) g")
    query(b, db, ddl)  # B gets the table only after A wrote rows into it
    query(a, db, "INSERT INTO later SELECT g, 'late ' || g FROM generate_series(4, 5) g")
    expected = [(1, "early 1"), (2, "early 2"), (3, "early 3"), (4, "late 4"), (5, "late 5")]
    wait_rows(b, db, "SELECT id, v FROM later ORDER BY id", expected, timeout=60)
    query(b, db, "INSERT INTO later VALUES (6, 'from b')")
    wait_rows(a, db, "SELECT id, v FROM later ORDER BY id", expected + [(6, "from b")],
              timeout=60)


def test_a_table_without_primary_key_is_reported_then_joins_when_it_gets_one(pair):  # noqa: F811
    from tests.e2e.test_replication import scrape

    electric, a, b, db = pair
    for pg in (a, b):
        query(pg, db, "CREATE TABLE public.nokey (id int NOT NULL, v text)")
    query(a, db, "INSERT INTO nokey SELECT g, 'v' || g FROM generate_series(1, 3) g")
    detail = electric.get_json("/api/status")["detail"]["connectors"]

    def reported():
        connectors = electric.get_json("/api/status")["detail"]["connectors"]
        return "public.nokey" in connectors["pg_a"]["tables_without_pk"]

    electric.wait_for(reported, what="the table without primary key reported")
    assert scrape(electric)[("electric_source_tables_not_replicated",
                             (("connector", "pg_a"),))] >= 1
    assert "table public.nokey has no primary key" in electric.log(400)
    assert detail  # status answered throughout
    for pg in (a, b):
        query(pg, db, "ALTER TABLE nokey ADD PRIMARY KEY (id)")
    wait_rows(b, db, "SELECT id, v FROM nokey ORDER BY id", [(1, "v1"), (2, "v2"), (3, "v3")],
              timeout=60)
