"""Transactions of any size through the embedded store, with Electric as a process: a
200,000-row single transaction from one Postgres reaches the other and a Satellite client
(written into the store while it is read, sent piece by piece), and a kill -9 in the middle
of writing one leaves nothing of it in the store; after the restart it arrives whole, once."""

from __future__ import annotations

import os
import sqlite3
import time

from tests.e2e.test_publisher_scenarios import dbs, ready  # noqa: F401 - fixtures
from tests.support.postgres import query, wait_rows
from tests.support.waiting import wait_until

ROWS = 200_000
KILLED_ROWS = 100_000  # still 20 pieces of 5,000: the kill lands while it is being written
BULK = ("INSERT INTO entries (id, content) SELECT gen_random_uuid(), 'row ' || g "
        "FROM generate_series(1, %s) g")


def start(electric_factory, a, b, db, workdir=None):
    return ready(electric_factory(env={"CONNECTORS": f"pg_a={a.url(db)};pg_b={b.url(db)}",
                                       "POSTGRES_SLOT": f"slot_{db}"}, workdir=workdir))


def store_counts(electric) -> tuple[int, int, int]:
    """(transactions, rows, changes of the largest transaction) in the store file."""
    path = os.path.join(electric.env["VAXINE_DATA_DIR"], "store.db")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        txns, largest = db.execute("SELECT count(*), coalesce(max(changes), 0) FROM txns").fetchone()
        rows = db.execute("SELECT count(*) FROM rows").fetchone()[0]
        return txns, rows, largest
    finally:
        db.close()


def test_a_200k_row_transaction_reaches_the_other_postgres_and_a_satellite_client(
        dbs, electric_factory):  # noqa: F811
    from electric.pb import satellite_pb2 as pb
    from electric.satellite import frames
    from tests.integration.satellite.sat_harness import SatClient

    (a, b, _c), db = dbs
    electric = start(electric_factory, a, b, db)
    client = SatClient(f"ws://127.0.0.1:{electric.env['WEBSOCKET_PORT']}/ws", timeout=30)
    client.auth(client_id="bulk-reader")
    client.send(pb.SatInStartReplicationReq(lsn=b"eof"))
    client.recv_until(pb.SatInStartReplicationResp)
    query(a, db, BULK, (ROWS,))
    ops, messages, ids = [], 0, set()
    deadline = time.monotonic() + 240
    while not (ops and ops[-1].HasField("commit")):
        assert time.monotonic() < deadline, f"{len(ops)} operations so far"
        msg = client.recv(timeout=60)
        if isinstance(msg, pb.SatPingReq):  # a client that stops answering is cut off
            client.send(frames.ping_resp(None))
        elif isinstance(msg, pb.SatOpLog):
            messages += 1
            ops.extend(msg.ops)
            ids.update(op.update.row_data[0] for op in msg.ops if op.HasField("update"))
    assert ops[0].HasField("begin") and len(ops) == ROWS + 2
    assert messages > 1 and len(ids) == ROWS  # one transaction over several messages
    client.close()
    wait_rows(b, db, "SELECT count(*) FROM entries", [(ROWS,)], timeout=240)
    assert query(b, db, "SELECT count(DISTINCT content) FROM entries") == [(ROWS,)]
    _txns, rows, largest = store_counts(electric)
    assert (rows, largest) == (ROWS, ROWS)  # one log transaction holding every row
    assert "a large transaction is being written while it is read" in electric.log(400)


def test_kill_9_while_a_big_transaction_is_written_leaves_nothing_then_it_arrives_once(
        dbs, electric_factory, tmp_path):  # noqa: F811
    (a, b, _c), db = dbs
    workdir = str(tmp_path / "electric")
    electric = start(electric_factory, a, b, db, workdir)
    query(a, db, "INSERT INTO entries (id, content) VALUES (gen_random_uuid(), 'before')")
    wait_rows(b, db, "SELECT count(*) FROM entries", [(1,)])
    query(a, db, BULK, (KILLED_ROWS,))
    wait_until(lambda: "a large transaction is being written" in electric.log(400), 60,
               "the large transaction being written", step=0.02, detail=electric.log)
    electric.kill()
    txns, rows, largest = store_counts(electric)
    assert (txns, rows, largest) == (1, 1, 1), "part of the big transaction is in the store"

    electric = start(electric_factory, a, b, db, workdir)
    wait_rows(b, db, "SELECT count(*) FROM entries", [(KILLED_ROWS + 1,)], timeout=240)
    assert store_counts(electric) == (2, KILLED_ROWS + 1, KILLED_ROWS)
    assert query(b, db, "SELECT count(DISTINCT content) FROM entries") == [(KILLED_ROWS + 1,)]

