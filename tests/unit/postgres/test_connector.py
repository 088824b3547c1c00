"""What electric/postgres/connector.py decides without a Postgres: the ordinary-session DSN
made from a replication one, the status a connector shows before and after provisioning,
and the one-line errors naming a connector. Provisioning, the source reader, table re-reads
and the copy of new tables all talk to Postgres: tests/integration/postgres/ covers them."""

from __future__ import annotations

import psycopg2.extensions as ext
import pytest

from electric.changes import Column, Table
from electric.postgres import provision as pv
from electric.postgres.connector import Connector, ReaderCrashed, Unreachable, plain_dsn
from electric.schema import FIRST_RELATION_ID, Migration, SchemaRegistry


def connector(registry: SchemaRegistry | None = None) -> Connector:
    return Connector("pg_1", "host=db port=5432 dbname=app replication=database",
                     "electric_pub", "electric_slot", registry or SchemaRegistry(),
                     sink=lambda _txn: None)


@pytest.mark.parametrize("dsn", [
    "host=db port=5432 dbname=app replication=database",
    "replication=true host=db port=5432 dbname=app",
    "host=db port=5432 dbname=app",
])
def test_plain_dsn_drops_replication_and_keeps_the_rest(dsn):
    params = ext.parse_dsn(plain_dsn(dsn))
    assert params == {"host": "db", "port": "5432", "dbname": "app"}


def test_plain_dsn_keeps_values_that_need_quoting():
    dsn = ext.make_dsn(host="db", password="it's a secret", replication="database")
    assert ext.parse_dsn(plain_dsn(dsn)) == {"host": "db", "password": "it's a secret"}


def test_plain_dsn_accepts_a_uri():
    params = ext.parse_dsn(plain_dsn("postgresql://u@db:5433/app?replication=database"))
    assert params == {"user": "u", "host": "db", "port": "5433", "dbname": "app"}


def test_a_new_connector_is_not_ready_and_says_why_in_its_status():
    c = connector()
    assert not c.is_ready() and not c.ready.is_set()
    assert c.status() == {
        "ready": False, "provisioned": False, "reader_connected": False,
        "last_acked_lsn": None, "lag_bytes": None,
        "publication": "electric_pub", "slot": "electric_slot",
        "tables": [], "tables_without_pk": [], "transactions_written": 0,
        "sink_retrying": False, "blocked_lsn": None, "reconnects": 0, "last_error": None,
        "subscription_blocked": None,
        "initial_sync": {"state": "pending", "tables_total": 0, "tables_done": 0,
                         "rows_copied": 0, "current_table": None, "seconds": None},
        "backfilled": {},
    }


def test_a_held_subscription_set_up_shows_in_the_status():
    c = connector()
    c.subscription.blocked = "upsert trigger cannot be installed: table s.t not found"
    assert c.status()["subscription_blocked"] == c.subscription.blocked


def test_a_provision_result_registers_the_tables_under_electrics_ids():
    """The step of reprovisioning that does not talk to Postgres."""
    registry = SchemaRegistry()
    c = connector(registry)
    table = Table("public", "items", 16400, (Column("id", "int4", 23, part_of_identity=True),),
                  ("id",))
    history = [Migration("1", "abc", None)]
    c._apply(pv.ProvisionResult([table], [("public", "no_pk")], history, "utf-8", 160000))
    assert c.tables[("public", "items")].oid == FIRST_RELATION_ID
    assert registry.publication_tables("electric_pub") == [c.tables[("public", "items")]]
    assert registry.migrations("pg_1") == history
    status = c.status()
    assert status["tables"] == ["public.items"]
    assert status["tables_without_pk"] == ["public.no_pk"]
    assert not status["ready"]  # provisioned is set by the lifecycle, streaming by the reader


def test_stopping_a_connector_that_never_started_is_harmless():
    c = connector()
    c.stop(timeout=0.1)
    assert not c.is_ready()


def test_errors_name_the_connector_in_one_line():
    unreachable = Unreachable("pg_1", "connection refused")
    assert str(unreachable) == "pg_1: cannot connect: connection refused"
    assert unreachable.name == "pg_1"
    crashed = ReaderCrashed("pg_1", KeyError("oops"))
    assert str(crashed) == "source reader of pg_1 crashed: KeyError: 'oops'"
    assert crashed.name == "pg_1" and "\n" not in str(crashed)
