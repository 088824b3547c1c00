"""Fixtures for the Postgres ingest tests: a fresh database per test on a shared cluster."""

from __future__ import annotations

import itertools
import os
import time

import psycopg2
import pytest

from electric.postgres import green

_counter = itertools.count()


class SourceDb:
    """One database of the shared test cluster, with a unique slot name."""

    def __init__(self, cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.slot = f"slot_{name}"
        self.publication = "all_tables"
        self.dsn = cluster.dsn(database=name)
        self._conn = None

    def conn(self):
        if self._conn is None or self._conn.closed:
            self._conn = green.connect(self.dsn)
            self._conn.autocommit = True
        return self._conn

    def execute(self, query: str, params=None) -> None:
        with self.conn().cursor() as cur:
            cur.execute(query, params)

    def query(self, query: str, params=None) -> list[tuple]:
        with self.conn().cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def confirmed_flush_lsn(self) -> str | None:
        rows = self.query(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (self.slot,),
        )
        return rows[0][0] if rows else None

    def current_lsn(self) -> str:
        return self.query("SELECT pg_current_wal_lsn()::text")[0][0]

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()


@pytest.fixture(scope="session")
def ingest_cluster(pg_factory):
    return pg_factory("ingest")


@pytest.fixture
def source_db(ingest_cluster):
    name = f"db{os.getpid()}_{next(_counter)}"
    ingest_cluster.create_database(name)
    db = SourceDb(ingest_cluster, name)
    yield db
    db.close()
    # Drop the slot (terminating any walsender still holding it) so the cluster stays tidy.
    try:
        with psycopg2.connect(ingest_cluster.dsn(database="postgres")) as admin:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND active_pid IS NOT NULL",
                    (db.slot,),
                )
                for _ in range(50):
                    cur.execute(
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active",
                        (db.slot,),
                    )
                    if cur.fetchone()[0] == 0:
                        break
                    time.sleep(0.05)
                cur.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (db.slot,),
                )
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg2.Error:
        pass
