"""The throwaway-cluster fixture gives a real, logical-replication-ready Postgres."""

import psycopg2


def test_cluster_is_ready_for_logical_replication(pg_factory):
    pg = pg_factory("fixture_check")
    with psycopg2.connect(pg.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SHOW wal_level")
        assert cur.fetchone()[0] == "logical"
        cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone()[0] is True
        cur.execute("SELECT current_setting('max_replication_slots')::int")
        assert cur.fetchone()[0] >= 10
    conn.close()


def test_cluster_restart_keeps_data(pg_factory):
    pg = pg_factory("fixture_restart")
    pg.psql("CREATE TABLE kept (id int primary key); INSERT INTO kept VALUES (1)", pg.database)
    pg.restart()
    assert pg.psql("SELECT count(*) FROM kept", pg.database).strip() == "1"
