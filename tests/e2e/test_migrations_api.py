"""Migrations through Electric's API against two real Postgres (docs/protocols.md §2.8)."""

import json
import re
import urllib.error
import urllib.request
import uuid

import pytest

from electric.devenv import DEV_SCHEMA_SQL
from tests.support.postgres import drop_database, query, wait_rows


def call(electric, method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(electric.status_url + path, method=method, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def setup(pg_factory, electric_factory, tmp_path):
    db = f"mig_{uuid.uuid4().hex[:8]}"
    a, b = pg_factory("e2e_a"), pg_factory("e2e_b")
    for pg in (a, b):
        pg.create_database(db)
        pg.psql(DEV_SCHEMA_SQL, database=db)
    migrations = tmp_path / "migrations"
    (migrations / "2").mkdir(parents=True)
    (migrations / "2" / "postgres.sql").write_text(
        "ALTER TABLE entries ADD added_column varchar(64);\n")
    (migrations / "3_broken").mkdir()
    (migrations / "3_broken" / "postgres.sql").write_text(
        "ALTER TABLE entries ADD half varchar(8);\nSELECT * FROM no_such_table;\n")
    (migrations / "20221110_create-items").mkdir()
    (migrations / "20221110_create-items" / "postgres.sql").write_text(
        "CREATE TABLE items (id uuid PRIMARY KEY, label text);\n")
    electric = electric_factory(env={
        "CONNECTORS": f"postgres_1={a.url(db)};postgres_2={b.url(db)}",
        "POSTGRES_SLOT": f"slot_{db}", "MIGRATIONS_DIR": str(migrations)})
    electric.wait_for(lambda: all(electric.get_json("/api/status")["connectors"].values()),
                      timeout=60, what="connectors ready")
    yield electric, a, b, db
    electric.kill()
    for pg in (a, b):
        drop_database(pg, db)


def test_migration_api_sanity(setup):
    electric, a, b, db = setup
    status, body = call(electric, "GET", "/api/migrations")
    assert status == 200
    assert [(m["origin"], m["vsn"], m["hash"]) for m in body] == [
        ("postgres_1", "1", "initial"), ("postgres_2", "1", "initial")]
    for origin in ("postgres_1", "postgres_2"):
        status, body = call(electric, "PUT", f"/api/migrations/{origin}", {"vsn": "2"})
        assert status == 200, body
        assert body["vsn"] == "2" and re.fullmatch(r"[0-9A-F]{32}", body["hash"])
        status, body = call(electric, "GET", f"/api/migrations/{origin}")
        assert (status, body["vsn"]) == (200, "2")
    assert call(electric, "PUT", "/api/migrations/postgres_1", {"vsn": "2"})[1]["error"] == \
        "already_migrated"
    status, body = call(electric, "PUT", "/api/migrations/postgres_1", {"vsn": "3"})
    assert (status, body["error"]) == (404, "vsn_not_found")
    status, body = call(electric, "PUT", "/api/migrations/nobody", {"vsn": "2"})
    assert (status, body["error"]) == (404, "unknown_origin")
    status, body = call(electric, "PUT", "/api/migrations/postgres_1", {"vsn": "../2"})
    assert (status, body["error"]) == (400, "invalid_vsn")
    status, body = call(electric, "PUT", "/api/migrations/postgres_1", raw=b"{not json")
    assert (status, body["error"]) == (400, "invalid_body")
    status, body = call(electric, "PUT", "/api/migrations/postgres_1", {"version": "2"})
    assert (status, body["error"]) == (400, "invalid_body")
    log = electric.log(tail=100000)
    assert "ready to migrate to version: 2" in log
    assert "origin=postgres_2" in log


def test_replication_across_schema_versions_and_failed_migration(setup):
    electric, a, b, db = setup
    row = str(uuid.uuid4())
    query(a, db, "INSERT INTO entries (id, content) VALUES (%s, 'before')", (row,))
    wait_rows(b, db, "SELECT content FROM entries WHERE id = %s", [("before",)], args=(row,))

    status, body = call(electric, "PUT", "/api/migrations/postgres_1", {"vsn": "2"})
    assert status == 200, body
    query(a, db, "UPDATE entries SET content = 'hej pg_2 new data', added_column = 'extra'"
                 " WHERE id = %s", (row,))
    wait_rows(b, db, "SELECT content FROM entries WHERE id = %s", [("hej pg_2 new data",)],
              args=(row,))
    query(b, db, "UPDATE entries SET content = 'hej pg_1 old data' WHERE id = %s", (row,))
    # pg_1 gets pg_2's update, and the column pg_2 does not know keeps its merged value.
    wait_rows(a, db, "SELECT content, added_column FROM entries WHERE id = %s",
              [("hej pg_1 old data", "extra")], args=(row,))

    # A failing migration rolls back and replication carries on on the old schema.
    status, body = call(electric, "PUT", "/api/migrations/postgres_2", {"vsn": "3_broken"})
    assert (status, body["error"]) == (500, "migration_failed")
    assert "no_such_table" in body["message"]
    columns = query(b, db, "SELECT column_name FROM information_schema.columns"
                           " WHERE table_name = 'entries'")
    assert ("half",) not in columns
    query(a, db, "UPDATE entries SET content = 'after failure' WHERE id = %s", (row,))
    wait_rows(b, db, "SELECT content FROM entries WHERE id = %s", [("after failure",)],
              args=(row,))
    assert electric.get_json("/api/status")["connectors"] == {"postgres_1": True,
                                                              "postgres_2": True}


def _subscriber(electric, origin):
    return electric.get_json("/api/status")["detail"]["connectors"][origin]["subscriber"]


def test_reapply_or_failure_keeps_the_stream_and_is_logged(setup):
    electric, a, b, db = setup
    streaming = lambda: (s := _subscriber(electric, "postgres_1"))["streaming"] and \
        not s["held"] and s  # noqa: E731
    assert call(electric, "PUT", "/api/migrations/postgres_1", {"vsn": "2"})[0] == 200
    sessions = electric.wait_for(streaming, what="postgres_1 streaming again")["sessions"]

    assert call(electric, "PUT", "/api/migrations/postgres_1", {"vsn": "2"})[0] == 409
    status, body = call(electric, "PUT", "/api/migrations/postgres_1", {"vsn": "3_broken"})
    assert (status, body["error"]) == (500, "migration_failed")
    # Neither restarted the stream into postgres_1, and it still flows.
    row = str(uuid.uuid4())
    query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'still flowing')", (row,))
    wait_rows(a, db, "SELECT content FROM entries WHERE id = %s", [("still flowing",)],
              args=(row,))
    assert streaming()["sessions"] == sessions

    # Migration names may contain dashes (generated names do).
    status, body = call(electric, "PUT", "/api/migrations/postgres_1",
                        {"vsn": "20221110_create-items"})
    assert (status, body["vsn"]) == (200, "20221110_create-items")

    lines = electric.log(tail=100000).splitlines()
    failed = [line for line in lines if "[WARNING]" in line and "3_broken" in line]
    assert len(failed) == 1 and "origin=postgres_1" in failed[0], failed
    assert "no_such_table" in failed[0] and "rolled back" in failed[0]
    # The search_path trap (test roles are named electric) is reported once per connector,
    # not again after each migration.
    trap = [line for line in lines if "default schema of this role" in line]
    assert sorted(line.split("origin=")[1].split()[0] for line in trap) == [
        "postgres_1", "postgres_2"], trap


def test_migrate_command_applies_to_every_connector(setup):
    import os
    import subprocess
    import sys

    from tests.support.electric import ROOT

    electric, a, b, db = setup
    env = {**os.environ, "PYTHONPATH": ROOT, **electric.env}
    command = [sys.executable, "-m", "electric.cli", "migrate", "2"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "postgres_1: applied 2" in first.stdout and "postgres_2: applied 2" in first.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "postgres_1: already at 2" in again.stdout
    missing = subprocess.run([*command[:-1], "42"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and "vsn_not_found" in missing.stdout
