"""Small pure helpers of the source reader and connector."""

import psycopg2.extensions as ext

from electric.limits import DEFAULT
from electric.postgres import green
from electric.postgres.connector import Connector, plain_dsn
from electric.postgres.source import SourceReader
from electric.retry import Backoff, Policy
from electric.schema import SchemaRegistry


def test_backoff_is_capped_and_resets():
    b = Backoff(Policy(0.1, 0.5))
    assert [b.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next() == 0.1


def test_plain_dsn_drops_replication():
    dsn = plain_dsn("host=h port=5 dbname=d replication=database")
    assert ext.parse_dsn(dsn) == {"host": "h", "port": "5", "dbname": "d"}


def test_connect_timeout_parsing():
    assert green.connect_timeout_of("host=h connect_timeout=3") == 3.0
    assert green.connect_timeout_of("host=h") == DEFAULT.postgres.connect_timeout
    assert green.connect_timeout_of("host=h connect_timeout=0") == DEFAULT.postgres.connect_timeout
    assert green.connect_timeout_of("not a dsn ===") == DEFAULT.postgres.connect_timeout


def test_reader_application_name_and_initial_status():
    r = SourceReader("pg_1", "host=h", slot="s", publication="p", sink=lambda tx: None)
    assert r.application_name == "electric_pg_1"
    r2 = SourceReader(
        "pg_1", "host=h application_name=mine", slot="s", publication="p", sink=lambda tx: None
    )
    assert r2.application_name == "mine"
    assert r.status() == {
        "connected": False,
        "last_acked_lsn": None,
        "transactions_written": 0,
        "transactions_acked": 0,
        "sink_retrying": False,
        "reconnects": 0,
        "last_error": None,
        "blocked_lsn": None,
        "server_wal_end": None,
        "lag_bytes": None,
    }


def test_connector_status_before_start():
    c = Connector("pg_1", "host=h", "all_tables", "slot", SchemaRegistry(), lambda tx: None)
    status = c.status()
    assert status["ready"] is False and status["provisioned"] is False
    assert status["reader_connected"] is False and status["last_acked_lsn"] is None
    assert status["tables_without_pk"] == [] and status["publication"] == "all_tables"
    assert not c.is_ready() and not c.ready.is_set()
