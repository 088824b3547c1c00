"""Pipelined ingest into the embedded store against a real Postgres: the reader keeps
reading while earlier transactions commit, yet every transaction is stored once, in commit
order, and the slot is acknowledged only up to what is durable — also when a write in the
middle of the pipeline is refused and later succeeds."""

from __future__ import annotations

import pytest

from electric.postgres.connector import Connector
from electric.postgres.lsn import Lsn
from electric.schema import SchemaRegistry
from electric.store import ChainedWriter, LocalStore, UnmappableChange
from tests.support.waiting import wait_until

READER = {"status_interval": 1.0, "heartbeat_interval": 1.0, "reconnect_min": 0.05,
          "reconnect_max": 0.5, "sink_blocked_retry": 0.3}
SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, v text);
CREATE TABLE gated (id int PRIMARY KEY, v text);
"""


@pytest.fixture
def pipeline(source_db, tmp_path):
    source_db.execute(SCHEMA)
    registry = SchemaRegistry()
    gate = {"open": True, "refusals": 0}

    def primary_keys(relation):
        if relation[1] == "gated" and not gate["open"]:
            gate["refusals"] += 1
            raise UnmappableChange("gated is closed (test)")
        return list(registry.table(relation).primary_keys)

    store = LocalStore(str(tmp_path / "store"), primary_keys)
    writer = ChainedWriter(store)
    connector = Connector("pg_1", source_db.dsn, source_db.publication, source_db.slot, registry,
                          store.write, reader_options={**READER, "submit": writer})
    connector.start()
    assert connector.ready.wait(20), connector.status()
    yield source_db, store, connector, gate
    connector.stop()
    store.close()


def stored(store):
    """(table, id) of every stored change, in log order."""
    out = []
    for _pos, tx in store.read_after(0, 10_000):
        out += [(c.relation[1], int(c.record["id"])) for c in tx.changes]
    return out


def test_many_transactions_stored_once_in_order_and_acked(pipeline):
    db, store, connector, _gate = pipeline
    for i in range(300):
        db.execute("INSERT INTO items VALUES (%s, 'x')", (i,))
    end = Lsn.parse(db.current_lsn())
    wait_until(lambda: len(stored(store)) == 300, timeout=60, what="300 transactions stored")
    assert stored(store) == [("items", i) for i in range(300)]
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= end, timeout=20, what="slot acked")
    assert connector.reader.transactions_written == 300


def test_a_refused_write_in_the_pipeline_holds_everything_after_it(pipeline):
    db, store, connector, gate = pipeline
    db.execute("INSERT INTO items VALUES (1, 'before')")
    wait_until(lambda: stored(store) == [("items", 1)], what="first stored")
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= Lsn.parse(db.current_lsn()),
               what="first acked")
    acked = db.confirmed_flush_lsn()

    gate["open"] = False
    db.execute("INSERT INTO gated VALUES (2, 'refused until the gate opens')")
    for i in range(3, 8):
        db.execute("INSERT INTO items VALUES (%s, 'after')", (i,))
    wait_until(lambda: connector.status().get("blocked_lsn") is not None, what="blocked")
    refused = gate["refusals"]
    # Several more refused retries (0.3 s apart, so status intervals pass too).
    wait_until(lambda: gate["refusals"] >= refused + 5, what="several retries refused")
    assert stored(store) == [("items", 1)]  # nothing after the refused one got in
    assert db.confirmed_flush_lsn() == acked

    gate["open"] = True
    expected = [("items", 1), ("gated", 2)] + [("items", i) for i in range(3, 8)]
    wait_until(lambda: stored(store) == expected, timeout=20, what="the rest, in order")
    end = Lsn.parse(db.current_lsn())
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= end, what="acked to the end")
    db.execute("INSERT INTO items VALUES (9, 'pipelined again')")
    wait_until(lambda: stored(store)[-1] == ("items", 9), what="pipeline resumed")
    assert stored(store) == expected + [("items", 9)]  # exactly once
