"""Clean-up helpers for tests that share a cluster between several databases."""

from __future__ import annotations

import psycopg2

from electric.devenv import PgCluster
from tests.support.waiting import wait_until


def query(pg: PgCluster, db: str, sql: str, args=None):
    """Run one statement in autocommit; returns the rows (or None for no result set)."""
    conn = psycopg2.connect(pg.dsn(database=db))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def wait_rows(pg: PgCluster, db: str, sql: str, expected, timeout: float = 30.0, args=None):
    """Poll ``sql`` until it returns ``expected``; fail with the last rows seen."""
    seen = []

    def matches():
        seen[:] = [query(pg, db, sql, args)]
        return seen[0] == expected

    wait_until(matches, timeout, f"{sql!r} to return {expected!r}", step=0.1,
               detail=lambda: f"last saw {seen[0] if seen else None!r}")
    return seen[0]


def drop_database(pg: PgCluster, db: str) -> None:
    """Drop ``db`` with its subscriptions (detached from their slots) and its slots.

    A leftover enabled subscription keeps an apply worker retrying a dead Electric, and a
    leftover slot pins WAL; both would slowly starve later tests on the same cluster.
    """
    names = pg.psql(f"SELECT s.subname FROM pg_subscription s JOIN pg_database d ON"
                    f" d.oid = s.subdbid WHERE d.datname = '{db}'").split()
    for name in names:
        pg.psql(f'ALTER SUBSCRIPTION "{name}" DISABLE', database=db)
        pg.psql(f'ALTER SUBSCRIPTION "{name}" SET (slot_name = NONE)', database=db)
        pg.psql(f'DROP SUBSCRIPTION "{name}"', database=db)
    pg.psql(f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            f" WHERE database = '{db}' AND active_pid IS NOT NULL")
    pg.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            f" WHERE database = '{db}' AND NOT active")
    pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
