"""The reference's Postgres scenarios (docs/protocols.md §2.8) with Electric as a process."""

import os
import subprocess
import sys
import time
import uuid

import pytest

from electric.devenv import DEV_SCHEMA_SQL, free_port
from tests.support.electric import ROOT
from tests.support.postgres import drop_database, query, wait_rows


def ready(process, timeout=60):
    def up():
        status = process.get_json("/api/status")
        return status["vaxine"] and all(status["connectors"].values())

    process.wait_for(up, timeout=timeout, what="Vaxine and connectors ready")
    return process


def disable_subscription(pg, db, name):
    """DISABLE returns before the apply worker exits: wait until it has.

    A connector reports ready before Electric has created and enabled its subscription
    (that happens right after, in ``subscribe_when_ready``): wait for that first, or
    Electric's own ENABLE may land after this DISABLE.
    """
    wait_rows(pg, db, "SELECT count(*) FROM pg_stat_subscription WHERE subname = %s"
                      " AND pid IS NOT NULL", [(1,)], args=(name,))
    query(pg, db, f"ALTER SUBSCRIPTION {name} DISABLE")
    wait_rows(pg, db, "SELECT count(*) FROM pg_stat_subscription WHERE subname = %s"
                      " AND pid IS NOT NULL", [(0,)], args=(name,))


def written(process, name):
    return process.get_json("/api/status")["detail"]["connectors"][name]["transactions_written"]


@pytest.fixture
def dbs(pg_factory):
    db = f"scn_{uuid.uuid4().hex[:8]}"
    pgs = [pg_factory("e2e_a"), pg_factory("e2e_b"), pg_factory("e2e_c")]
    for pg in pgs:
        pg.create_database(db)
        pg.psql(DEV_SCHEMA_SQL, database=db)
    yield pgs, db
    for pg in pgs:
        drop_database(pg, db)


@pytest.fixture
def pair(dbs, electric_factory):
    (a, b, _c), db = dbs
    electric = electric_factory(env={"CONNECTORS": f"pg_a={a.url(db)};pg_b={b.url(db)}",
                                     "POSTGRES_SLOT": f"slot_{db}"})
    return ready(electric), a, b, db


@pytest.mark.parametrize("table", ["entries", "entries_default"])
def test_one_direction_for_full_and_default_identity(pair, table):
    electric, a, b, db = pair
    row = str(uuid.uuid4())
    query(a, db, f"INSERT INTO {table} (id, content) VALUES (%s, 'Hello from a')", (row,))
    wait_rows(b, db, f"SELECT content FROM {table}", [("Hello from a",)])
    query(a, db, f"UPDATE {table} SET content = 'other' WHERE id = %s", (row,))
    wait_rows(b, db, f"SELECT content FROM {table}", [("other",)])
    query(a, db, f"DELETE FROM {table} WHERE id = %s", (row,))
    wait_rows(b, db, f"SELECT count(*) FROM {table}", [(0,)])


def test_bidirectional_reversed_order(pair):
    electric, a, b, db = pair
    query(b, db, "INSERT INTO entries (content) VALUES ('hello from pg_b')")
    query(a, db, "INSERT INTO entries (content) VALUES ('hello from pg_a')")
    expected = [("hello from pg_a",), ("hello from pg_b",)]
    for pg in (a, b):
        wait_rows(pg, db, "SELECT content FROM entries ORDER BY content", expected)
    query(a, db, "UPDATE entries SET content_b = 'bye from pg_a'")
    wait_rows(b, db, "SELECT count(*) FROM entries WHERE content_b = 'bye from pg_a'", [(2,)])
    query(b, db, "DELETE FROM entries WHERE content_b = 'bye from pg_a'")
    wait_rows(a, db, "SELECT count(*) FROM entries", [(0,)])


def test_insert_conflict_converges_to_the_later_write(pair):
    electric, a, b, db = pair
    row = str(uuid.uuid4())
    disable_subscription(b, db, "pg_b")
    before = written(electric, "pg_a")
    query(a, db, "INSERT INTO entries (id, content) VALUES (%s, 'Hello from a')", (row,))
    electric.wait_for(lambda: written(electric, "pg_a") > before, what="pg_a's insert in the log")
    query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'Hello from b')", (row,))
    query(b, db, "ALTER SUBSCRIPTION pg_b ENABLE")
    for pg in (a, b):
        wait_rows(pg, db, "SELECT content FROM entries WHERE id = %s", [("Hello from b",)],
                  args=(row,))


def test_insert_insert_both_rows_survive(pair):
    electric, a, b, db = pair
    query(a, db, "INSERT INTO entries (content) VALUES ('A_VALUE')")
    query(b, db, "INSERT INTO entries (content) VALUES ('B_VALUE')")
    for pg in (a, b):
        wait_rows(pg, db, "SELECT content FROM entries ORDER BY content",
                  [("A_VALUE",), ("B_VALUE",)])


def test_update_wins_over_delete(pair):
    electric, a, b, db = pair
    row = str(uuid.uuid4())
    disable_subscription(b, db, "pg_b")
    query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'State1')", (row,))
    wait_rows(a, db, "SELECT content FROM entries", [("State1",)])
    before = written(electric, "pg_a")
    query(a, db, "DELETE FROM entries WHERE id = %s", (row,))
    electric.wait_for(lambda: written(electric, "pg_a") > before, what="pg_a's delete in the log")
    query(b, db, "UPDATE entries SET content = 'State2' WHERE id = %s", (row,))
    query(b, db, "ALTER SUBSCRIPTION pg_b ENABLE")
    for pg in (a, b):
        wait_rows(pg, db, "SELECT content FROM entries WHERE id = %s", [("State2",)],
                  args=(row,))


def test_three_postgres_two_electrics_one_standalone_vaxine(dbs, electric_factory, tmp_path):
    (a, b, c), db = dbs
    api, repl = free_port(), free_port()
    vaxine_log = open(tmp_path / "vaxine.log", "wb")
    vaxine = subprocess.Popen(
        [sys.executable, "-m", "electric.cli", "vaxine", "--data-dir", str(tmp_path / "vx"),
         "--api-port", str(api), "--replication-port", str(repl)],
        env={**os.environ, "PYTHONPATH": ROOT}, stdout=vaxine_log, stderr=subprocess.STDOUT)
    try:
        shared = {"VAXINE_HOST": "127.0.0.1", "VAXINE_API_PORT": str(api),
                  "VAXINE_REPLICATION_PORT": str(repl), "POSTGRES_SLOT": f"slot_{db}"}
        first = electric_factory(env={**shared,
                                      "CONNECTORS": f"pg_a={a.url(db)};pg_b={b.url(db)}"})
        second = electric_factory(env={**shared, "CONNECTORS": f"pg_c={c.url(db)}"})
        ready(first)
        ready(second)
        assert second.get_json("/api/status")["detail"]["vaxine"]["mode"] == "external"
        query(a, db, "INSERT INTO entries (content) VALUES ('Hello from a')")
        query(c, db, "INSERT INTO entries (content) VALUES ('Hello from c')")
        expected = [("Hello from a",), ("Hello from c",)]
        try:
            for pg in (a, b, c):
                wait_rows(pg, db, "SELECT content FROM entries ORDER BY content", expected)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nFIRST:\n{first.log(60)}\nSECOND:\n{second.log(60)}") \
                from None
    finally:
        vaxine.terminate()
        vaxine.wait(10)
        vaxine_log.close()


SBTEST = """CREATE TABLE public.sbtest{n} (id SERIAL PRIMARY KEY, k INTEGER NOT NULL DEFAULT 0,
    c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '');
    CREATE INDEX k_{n} ON public.sbtest{n} (k);"""


def test_catch_up_of_ten_tables_of_a_thousand_rows(dbs, electric_factory):
    (a, b, _c), db = dbs
    slot = f"slot_{db}"
    for pg in (a, b):
        pg.psql("".join(SBTEST.format(n=n) for n in range(1, 11)), database=db)
    # Like the reference's init script: publication and slot exist before the data.
    query(a, db, "CREATE PUBLICATION all_tables FOR ALL TABLES")
    query(a, db, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    for n in range(1, 11):
        for batch in range(10):
            query(a, db, f"INSERT INTO sbtest{n} (k, c, pad) SELECT g, md5(g::text), 'pad'"
                         f" FROM generate_series({batch * 100 + 1}, {batch * 100 + 100}) g")
    started = time.monotonic()
    electric = electric_factory(env={"CONNECTORS": f"pg_a={a.url(db)};pg_b={b.url(db)}",
                                     "POSTGRES_SLOT": slot})
    counts = " UNION ALL ".join(f"SELECT count(*) FROM sbtest{n}" for n in range(1, 11))
    # Convergence is the assertion; how fast it is belongs to the benchmarks (bench/).
    wait_rows(b, db, counts, [(1000,)] * 10, timeout=90)
    print(f"catch-up of 10 x 1000 rows (from Electric start): "
          f"{time.monotonic() - started:.2f}s")
    assert "[ERROR]" not in electric.log(tail=100000)
