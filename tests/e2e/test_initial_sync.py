"""Initial sync with Electric as a process and two stock Postgres 15: rows that exist before
Electric's first start reach the other side (overlapping keys merge), rows written while
the copy runs are neither lost nor doubled, and a copy cut short by kill -9 is done again."""

from __future__ import annotations

import uuid

from tests.e2e.test_replication import two_postgres  # noqa: F401 - fixture
from tests.support.postgres import query, wait_rows
from tests.support.waiting import wait_until

CHECKSUM = "SELECT count(*), md5(string_agg(id::text || ':' || coalesce(content, ''), ',' ORDER BY id)) FROM entries"


def start(electric_factory, a, b, db, workdir=None, wait=True):
    e = electric_factory(env={"CONNECTORS": f"pg_a={a.url(db)};pg_b={b.url(db)}",
                              "POSTGRES_SLOT": f"slot_{db}"}, workdir=workdir, wait=wait)
    return e


def sync_of(electric, name):
    return electric.get_json("/api/status")["detail"]["connectors"][name]["initial_sync"]


def ids(n, prefix):
    return [str(uuid.UUID(int=(prefix << 64) + i)) for i in range(n)]


def test_existing_rows_on_both_sides_reach_the_other_and_overlaps_merge(
        two_postgres, electric_factory):  # noqa: F811
    (a, b), db = two_postgres
    only_a, only_b, both = ids(90, 1), ids(40, 2), ids(10, 3)
    for i in only_a + both:
        query(a, db, "INSERT INTO entries (id, content) VALUES (%s, 'from a')", (i,))
    for i in only_b + both:
        query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'from b')", (i,))
    electric = start(electric_factory, a, b, db)
    for pg in (a, b):
        wait_rows(pg, db, "SELECT count(*) FROM entries", [(140,)], timeout=60)
    # the overlapping rows end the same on both sides (like concurrent inserts)
    wait_rows(b, db, CHECKSUM, query(a, db, CHECKSUM), timeout=30)
    for name, rows in (("pg_a", 100), ("pg_b", 50)):
        sync = sync_of(electric, name)
        assert sync["state"] == "done" and sync["rows_copied"] == rows
        assert sync["tables_done"] == sync["tables_total"] >= 2
    # a restart does not copy again
    electric.terminate()
    electric.start()
    electric.wait_for(lambda: all(electric.get_json("/api/status")["connectors"].values()))
    assert sync_of(electric, "pg_a")["state"] == "done"
    assert sync_of(electric, "pg_a")["rows_copied"] == 0


def test_writes_during_the_copy_and_a_kill_during_it_lose_and_double_nothing(
        two_postgres, electric_factory, tmp_path):  # noqa: F811
    (a, b), db = two_postgres
    query(a, db, "INSERT INTO entries (id, content) SELECT gen_random_uuid(), 'old ' || g "
                 "FROM generate_series(1, 100000) g")
    workdir = str(tmp_path / "electric")
    electric = start(electric_factory, a, b, db, workdir=workdir, wait=False)

    def wait_copying():
        wait_until(lambda: sync_of(electric, "pg_a")["rows_copied"] > 0, 60, "copy under way",
                   step=0.02, ignore=(OSError, KeyError, ValueError), detail=electric.log)

    wait_copying()
    electric.kill()  # in the middle of the copy: it is done again after the restart
    electric.start(wait=False)
    wait_copying()
    assert "initial sync of pg_a was interrupted; starting it again" in electric.log(400)
    query(a, db, "INSERT INTO entries (id, content) SELECT gen_random_uuid(), 'during' "
                 "FROM generate_series(1, 20)")
    query(a, db, "UPDATE entries SET content = 'changed during' WHERE id IN "
                 "(SELECT id FROM entries WHERE content LIKE 'old %' LIMIT 5)")
    query(a, db, "DELETE FROM entries WHERE id IN "
                 "(SELECT id FROM entries WHERE content LIKE 'old %' LIMIT 7)")
    wait_rows(b, db, "SELECT count(*) FROM entries", [(100_000 + 20 - 7,)], timeout=240)
    wait_rows(b, db, CHECKSUM, query(a, db, CHECKSUM), timeout=60)
    assert query(b, db, "SELECT count(*) FROM entries WHERE content = 'changed during'") == [(5,)]
