"""Two real Postgres instances, one Electric process, embedded Vaxine: active-active."""

import urllib.request
import uuid

import psycopg2
import pytest

from electric.devenv import DEV_SCHEMA_SQL
from tests.support.postgres import drop_database, query, wait_rows


def scrape(electric) -> dict:
    """/metrics parsed with prometheus-client's own text parser: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(electric.status_url + "/metrics").read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}




@pytest.fixture
def two_postgres(pg_factory):
    db = f"e2e_{uuid.uuid4().hex[:8]}"
    pgs = [pg_factory("e2e_a"), pg_factory("e2e_b")]
    for pg in pgs:
        pg.create_database(db)
        pg.psql(DEV_SCHEMA_SQL, database=db)
    yield pgs, db
    for pg in pgs:
        drop_database(pg, db)


@pytest.fixture
def electric(two_postgres, electric_factory):
    (a, b), db = two_postgres
    connectors = f"pg_a={a.url(db)};pg_b={b.url(db)}"
    process = electric_factory(env={"CONNECTORS": connectors, "POSTGRES_SLOT": f"slot_{db}"})
    process.wait_for(lambda: all(process.get_json("/api/status")["connectors"].values()),
                     timeout=60, what="both connectors ready")
    return process


def test_inserts_updates_deletes_flow_both_ways(two_postgres, electric):
    (a, b), db = two_postgres
    id1, id2 = str(uuid.uuid4()), str(uuid.uuid4())
    query(a, db, "INSERT INTO entries (id, content) VALUES (%s, 'from a')", (id1,))
    query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'from b')", (id2,))
    both = sorted([(id1, "from a"), (id2, "from b")])
    for pg in (a, b):
        wait_rows(pg, db, "SELECT id::text, content FROM entries ORDER BY id", both)

    query(b, db, "UPDATE entries SET content = 'changed on b' WHERE id = %s", (id1,))
    wait_rows(a, db, "SELECT content FROM entries WHERE id = %s", [("changed on b",)], args=(id1,))

    query(a, db, "DELETE FROM entries WHERE id = %s", (id2,))
    wait_rows(b, db, "SELECT count(*) FROM entries WHERE id = %s", [(0,)], args=(id2,))

    status = electric.get_json("/api/status")
    assert status["connectors"] == {"pg_a": True, "pg_b": True}
    assert status["vaxine"] is True
    detail = status["detail"]
    assert detail["vaxine"]["mode"] == "embedded"
    for name in ("pg_a", "pg_b"):
        assert detail["connectors"][name]["reader_connected"] is True
        assert detail["connectors"][name]["subscriber"]["streaming"] is True
        assert detail["connectors"][name]["transactions_written"] >= 1
    before = scrape(electric)
    assert before[("electric_subscriber_streaming", (("connector", "pg_b"),))] == 1.0
    assert before[("electric_source_blocked", (("connector", "pg_a"),))] == 0.0
    assert before[("electric_source_write_retrying", (("connector", "pg_a"),))] == 0.0
    query(a, db, "INSERT INTO entries (content) VALUES ('counted')")
    wait_rows(b, db, "SELECT count(*) FROM entries WHERE content = 'counted'", [(1,)])
    after = scrape(electric)
    written_a = ("electric_transactions_in_total", (("source", "pg_a"),))
    sent_b = ("electric_transactions_out_total", (("sink", "pg_b"),))
    assert after[written_a] == before[written_a] + 1
    assert after[sent_b] >= before[sent_b] + 1
    assert "[ERROR]" not in electric.log(tail=100000)


def test_multi_row_transaction_arrives_whole(two_postgres, electric):
    (a, b), db = two_postgres
    conn = psycopg2.connect(a.dsn(database=db))
    with conn, conn.cursor() as cur:
        for i in range(50):
            cur.execute("INSERT INTO entries_default (content) VALUES (%s)", (f"row {i}",))
    conn.close()
    wait_rows(b, db, "SELECT count(*) FROM entries_default", [(50,)])


def test_store_figures_in_status_and_metrics(two_postgres, electric):
    (a, b), db = two_postgres
    before = electric.get_json("/api/status")["detail"]["vaxine"]
    assert before["mode"] == "embedded" and before["path"].endswith("store.db")
    query(a, db, "INSERT INTO entries_default (content) SELECT 'r' || g FROM generate_series(1, 30) g")
    wait_rows(b, db, "SELECT count(*) FROM entries_default", [(30,)])
    store = electric.get_json("/api/status")["detail"]["vaxine"]
    assert store["rows"] == before["rows"] + 30
    assert store["log_transactions"] == before["log_transactions"] + 1
    assert store["log_changes"] == before["log_changes"] + 30
    assert store["last_position"] > before["last_position"] and store["bytes"] > 0
    metrics = scrape(electric)
    assert metrics[("electric_store_rows", ())] == store["rows"]
    assert metrics[("electric_store_log_transactions", ())] == store["log_transactions"]
    assert metrics[("electric_store_transactions_written_total", ())] >= 1
