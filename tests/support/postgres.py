"""Clean-up helpers for tests that share a cluster between several databases."""

from __future__ import annotations

from electric.devenv import PgCluster


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
