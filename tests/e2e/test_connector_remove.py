"""`electric connector remove NAME` leaves no slot, publication or subscription behind."""

import os
import subprocess
import sys
import uuid

from electric.devenv import DEV_SCHEMA_SQL
from tests.support.checkout import clean_env
from tests.support.electric import ROOT
from tests.support.postgres import drop_database, query


def test_connector_remove_drops_slot_publication_and_subscription(pg_factory,
                                                                  electric_factory, tmp_path):
    pg = pg_factory("e2e_a")
    db = f"rm_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    pg.psql(DEV_SCHEMA_SQL, database=db)
    slot, publication = f"slot_{db}", f"pub_{db}"
    electric = electric_factory(env={"CONNECTORS": f"pb={pg.url(db)}", "POSTGRES_SLOT": slot,
                                     "POSTGRES_PUBLICATION": publication})
    electric.wait_for(
        lambda: electric.get_json("/api/status")["detail"]["connectors"]["pb"]["subscriber"]
        .get("streaming"), timeout=60, what="subscription streaming")
    # As the guide shows it: the connector's settings in an ini file.
    ini = tmp_path / "old-electric.ini"
    ini.write_text(f"[electric]\nconnectors = pb={pg.url(db)}\npostgres_slot = {slot}\n"
                   f"postgres-publication = {publication}\n")
    env = clean_env()

    def remove(name: str = "pb") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, os.path.join(ROOT, "bin", "electric"), "--config",
                               str(ini), "connector", "remove", name],
                              env=env, capture_output=True, text=True, timeout=60)

    def objects():
        return (query(pg, db, "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s",
                      (slot,)),
                query(pg, db, "SELECT pubname FROM pg_publication WHERE pubname = %s",
                      (publication,)),
                query(pg, db, "SELECT subname FROM pg_subscription WHERE subname = 'pb'"))

    try:
        assert objects() == ([(slot,)], [(publication,)], [("pb",)])
        # While Electric streams the slot it would re-create it: refused, nothing dropped.
        busy = remove()
        assert busy.returncode == 1
        assert busy.stderr.count("\n") == 1 and "being streamed" in busy.stderr, busy.stderr
        assert objects() == ([(slot,)], [(publication,)], [("pb",)])

        unknown = remove("nobody")
        assert unknown.returncode == 2 and "'nobody'" in unknown.stderr

        assert electric.terminate() == 0
        done = remove()
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines() == [
            "pb: dropped subscription pb", f"pb: dropped replication slot {slot}",
            f"pb: dropped publication {publication}"]
        assert objects() == ([], [], [])

        again = remove()  # idempotent
        assert again.returncode == 0 and "already gone" in again.stdout
    finally:
        electric.kill()
        drop_database(pg, db)
