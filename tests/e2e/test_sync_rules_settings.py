"""SYNC_RULES_FILE at start-up: a bad file stops Electric naming file:line; JWT mode without
rules warns that every client sees everything."""

import base64
import os
import subprocess
import sys
import uuid

import pytest

from electric.devenv import DEV_SCHEMA_SQL
from tests.support.electric import ROOT
from tests.support.postgres import drop_database

KEY = base64.b64encode(b"k" * 32).decode()
JWT = {"SATELLITE_AUTH_MODE": "jwt", "SATELLITE_AUTH_SIGNING_KEY": KEY}
RULES = '[claims]\nsub = "string"\n\n[tables.items]\nrows = "owner_id = claims.sub"\n'
WARNING = "SYNC_RULES_FILE is not set"


def test_jwt_mode_without_rules_warns_once_with_rules_or_insecure_does_not(
        electric_factory, tmp_path):
    unruled = electric_factory(env=JWT)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    ruled = electric_factory(env={**JWT, "SYNC_RULES_FILE": str(rules)})
    insecure = electric_factory()
    for process in (unruled, ruled, insecure):
        assert process.terminate() == 0
    warnings = [line for line in unruled.log(tail=10_000).splitlines() if WARNING in line]
    assert len(warnings) == 1 and "[WARNING]" in warnings[0], unruled.log()
    assert WARNING not in ruled.log(tail=10_000) and WARNING not in insecure.log(tail=10_000)


def test_a_bad_rules_file_stops_start_up_with_exit_2_naming_the_line(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.replace("= claims.sub", "= claims.nobody"))
    env = {k: v for k, v in os.environ.items() if k not in ("SYNC_RULES_FILE", "STATUS_PORT")}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "electric"),
                             "--sync-rules-file", str(rules)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"{rules}:5: public.items: rows: claim 'nobody' is not declared" in line


@pytest.fixture
def database(pg_factory):
    pg = pg_factory("rules")
    db = f"rules_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    pg.psql(DEV_SCHEMA_SQL, database=db)
    yield pg, db
    drop_database(pg, db)


def connected(pg, db, rules):
    return {"CONNECTORS": f"pg_a={pg.url(db)}", "POSTGRES_SLOT": f"slot_{db}",
            "SYNC_RULES_FILE": str(rules)}


def test_rules_are_checked_against_the_replicated_tables(database, electric_factory, tmp_path):
    pg, db = database
    rules = tmp_path / "rules.toml"
    # entries has no owner column: once the connector has reported its tables, Electric
    # stops with exit 2 and one CRITICAL line naming the file and line.
    rules.write_text('[claims]\nsub = "string"\n\n[tables.entries]\nrows = "all"\n\n'
                     '[tables.entries_default]\nrows = "owner_id = claims.sub"\n')
    bad = electric_factory(env=connected(pg, db, rules), wait=False)
    assert bad.proc.wait(timeout=60) == 2, bad.log()
    critical = [line for line in bad.log(tail=10_000).splitlines() if "[CRITICAL]" in line]
    assert len(critical) == 1, bad.log()
    assert f"SYNC_RULES_FILE: {rules}:8: public.entries_default: no column 'owner_id'" \
        in critical[0]
    # A fitting file: Electric runs and says it checked it.
    rules.write_text('[claims]\nsub = "string"\n\n[tables.entries]\nrows = "content = claims.sub"\n')
    good = electric_factory(env=connected(pg, db, rules))
    good.wait_for(lambda: "sync rules" in good.log(tail=10_000)
                  and "checked against" in good.log(tail=10_000), timeout=60,
                  what="the rules check")
    assert good.proc.poll() is None
    assert good.terminate() == 0
