"""End to end: two real Postgres, Electric as a process (embedded Vaxine), Satellite clients.

* the real npm electric-sql@0.1.3 client receives rows inserted in Postgres, and its own
  inserts/updates/deletes reach both Postgres instances;
* the reference ``sysbench_ws`` scenario (docs/protocols.md §2.8) with the Python client;
* Electric restarted between a client's writes: acked transactions are never lost, the
  server's start request tells the client where to resume, re-sent ones apply once.
"""

from __future__ import annotations

import time
import uuid

import pytest

from electric.devenv import DEV_SCHEMA_SQL
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from tests.integration.satellite.sat_harness import SatClient, delete, insert, oplog, update
from tests.interop.node_peer import NodePeer
from tests.support.postgres import drop_database, query, wait_rows

SBTEST_SQL = """
CREATE TABLE IF NOT EXISTS public.sbtest1 (
    id INTEGER PRIMARY KEY, k INTEGER NOT NULL DEFAULT 0,
    c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS public.sbtest2 (
    id INTEGER PRIMARY KEY, k INTEGER NOT NULL DEFAULT 0,
    c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '');
"""
ENTRIES_COLUMNS = ("id", "content", "content_b")






@pytest.fixture
def two_postgres(pg_factory):
    db = f"sat_{uuid.uuid4().hex[:8]}"
    pgs = [pg_factory("e2e_a"), pg_factory("e2e_b")]
    for pg in pgs:
        pg.create_database(db)
        pg.psql(DEV_SCHEMA_SQL + SBTEST_SQL, database=db)
    yield pgs, db
    for pg in pgs:
        drop_database(pg, db)


def start_electric(two_postgres, electric_factory, **env):
    (a, b), db = two_postgres
    process = electric_factory(
        env={
            "CONNECTORS": f"pg_a={a.url(db)};pg_b={b.url(db)}",
            "POSTGRES_SLOT": f"slot_{db}",
            **env,
        }
    )
    process.wait_for(
        lambda: all(process.get_json("/api/status")["connectors"].values()),
        timeout=60,
        what="both connectors ready",
    )
    return process


def ws_url(electric) -> str:
    return f"ws://127.0.0.1:{electric.env['WEBSOCKET_PORT']}/ws"


def entries_relation(rel_id=0) -> pb.SatRelation:
    return pb.SatRelation(
        schema_name="public",
        table_name="entries",
        relation_id=rel_id,
        columns=[pb.SatRelationColumn(name=c, type="text") for c in ENTRIES_COLUMNS],
    )


@pytest.mark.slow
def test_real_client_against_electric_and_two_postgres(two_postgres, electric_factory):
    (a, b), db = two_postgres
    electric = start_electric(two_postgres, electric_factory)
    from_pg = str(uuid.uuid4())
    query(a, db, "INSERT INTO entries (id, content) VALUES (%s, 'from postgres')", (from_pg,))

    peer = NodePeer()
    try:
        peer.call(
            "connect",
            address="127.0.0.1",
            port=int(electric.env["WEBSOCKET_PORT"]),
            appId="node-device",
            token="user-1",
        )
        peer.call("auth")
        peer.call("start", lsn_hex=b"0".hex())
        tx = peer.wait(
            lambda e: (
                e["event"] == "tx"
                and any(c["record"] and c["record"].get("id") == from_pg for c in e["changes"])
            ),
            timeout=30,
            what="the Postgres row",
        )
        change = next(c for c in tx["changes"] if c["record"]["id"] == from_pg)
        assert change["record"]["content"] == "from postgres"

        relation = {
            "id": 0,
            "schema": "public",
            "table": "entries",
            "tableType": 0,
            "columns": [{"name": c, "type": "TEXT"} for c in ENTRIES_COLUMNS],
        }
        own = str(uuid.uuid4())
        row = {"id": own, "content": "hi from 0.1.3", "content_b": "b"}
        peer.call("tx", lsn="1", relation=relation, changes=[{"type": "INSERT", "record": row}])
        peer.wait(lambda e: e["event"] == "ack" and e["lsn"] == "1", timeout=15)
        for pg in (a, b):
            wait_rows(
                pg,
                db,
                "SELECT content, content_b FROM entries WHERE id = %s",
                [("hi from 0.1.3", "b")],
                args=(own,),
            )
        changed = {**row, "content": "changed by node"}
        peer.call(
            "tx",
            lsn="2",
            relation=relation,
            changes=[{"type": "UPDATE", "record": changed, "oldRecord": row}],
        )
        peer.wait(lambda e: e["event"] == "ack" and e["lsn"] == "2", timeout=15)
        for pg in (a, b):
            wait_rows(
                pg,
                db,
                "SELECT content FROM entries WHERE id = %s",
                [("changed by node",)],
                args=(own,),
            )
        peer.call(
            "tx", lsn="3", relation=relation, changes=[{"type": "DELETE", "oldRecord": changed}]
        )
        peer.wait(lambda e: e["event"] == "ack" and e["lsn"] == "3", timeout=15)
        for pg in (a, b):
            wait_rows(pg, db, "SELECT count(*) FROM entries WHERE id = %s", [(0,)], args=(own,))
        assert peer.errors() == []
    finally:
        peer.close()
    assert "[ERROR]" not in electric.log(tail=100000)


@pytest.mark.slow
def test_sysbench_ws_scenario(two_postgres, electric_factory):
    (a, b), db = two_postgres
    electric = start_electric(two_postgres, electric_factory)
    client = SatClient(ws_url(electric), timeout=10)
    client.auth(client_id="sysbench-ws")
    client.send(pb.SatInStartReplicationReq(lsn=b"0"))
    client.recv_until(pb.SatInStartReplicationResp)

    # "prepare": 10 rows in each sbtest table on pg_a; they reach pg_b and the client.
    for table in ("sbtest1", "sbtest2"):
        query(
            a,
            db,
            f"INSERT INTO {table} (id, k, c, pad) "
            "SELECT g, g * 7, 'c-' || g, 'pad' FROM generate_series(1, 10) g",
        )
    for table in ("sbtest1", "sbtest2"):
        wait_rows(b, db, f"SELECT count(id) FROM {table}", [(10,)])
    pg_entry = str(uuid.uuid4())
    query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'from pg_b')", (pg_entry,))

    seen_tables: dict[str, int] = {}
    relations: dict[int, str] = {}
    got_pg_entry = False
    deadline = time.monotonic() + 30
    while not (
        got_pg_entry and seen_tables.get("sbtest1") == 10 and seen_tables.get("sbtest2") == 10
    ):
        assert time.monotonic() < deadline, (seen_tables, got_pg_entry)
        msg, _ = client.recv_until(pb.SatRelation | pb.SatOpLog, timeout=30)
        if isinstance(msg, pb.SatRelation):
            relations[msg.relation_id] = msg.table_name
            continue
        for op in msg.ops:
            if op.WhichOneof("op") == "update":  # rows come out of Vaxine as updates
                name = relations[op.update.relation_id]
                seen_tables[name] = seen_tables.get(name, 0) + 1
                if name == "entries" and op.update.row_data[0] == pg_entry.encode():
                    got_pg_entry = True

    uid = str(uuid.uuid4()).encode()
    client.send(entries_relation(11111))
    steps = [
        (b"1", insert(11111, uid, b"Hello from Satellite", b"")),
        (b"2", update(11111, [uid, b"How are you?", b""])),
        (b"3", delete(11111, uid, b"How are you?", b"")),
    ]
    expectations = [
        [("Hello from Satellite",)],
        [("How are you?",)],
        [],
    ]
    for (lsn, op), expected in zip(steps, expectations, strict=True):
        client.send(oplog(lsn, op, ts=1666371243516))
        ack, _ = client.recv_until(pb.SatPingResp, timeout=15)
        assert ack.lsn == lsn
        for pg in (a, b):
            wait_rows(
                pg, db, "SELECT content FROM entries WHERE id = %s", expected, args=(uid.decode(),)
            )
    for pg in (a, b):  # only the Postgres-inserted row remains
        wait_rows(pg, db, "SELECT id::text FROM entries", [(pg_entry,)])
    client.close()
    log = electric.log(tail=100000)
    assert "Hello from Satellite" in log  # incoming transactions are logged at debug
    assert "client_id=sysbench-ws" in log  # per-client log metadata
    assert "[ERROR]" not in log


@pytest.mark.slow
def test_restart_between_writes_loses_nothing(two_postgres, electric_factory):
    (a, b), db = two_postgres
    electric = start_electric(two_postgres, electric_factory)
    ids = [str(uuid.uuid4()) for _ in range(6)]

    def connect():
        c = SatClient(ws_url(electric), timeout=10)
        start = c.auth(client_id="restarting-device")
        c.send(entries_relation(0))
        return c, start.lsn

    def send(c, n):
        c.send(oplog(str(n).encode(), insert(0, ids[n].encode(), f"row {n}".encode(), b"")))

    c, resume = connect()
    assert resume == b""
    for n in range(3):
        send(c, n)
        assert c.recv_until(pb.SatPingResp)[0].lsn == str(n).encode()
    # Two more go out and Electric is killed at once: they may or may not have been acked.
    send(c, 3)
    send(c, 4)
    electric.kill()
    c.close()
    electric.start()
    electric.wait_for(
        lambda: all(electric.get_json("/api/status")["connectors"].values()),
        timeout=60,
        what="connectors after restart",
    )

    c, resume = connect()
    durable = int(resume.decode())
    assert durable >= 2  # everything acked before the crash is durable
    # A well-behaved client re-sends everything after the server's lsn.
    for n in range(durable + 1, 6):
        send(c, n)
        assert c.recv_until(pb.SatPingResp)[0].lsn == str(n).encode()
    expected = sorted((ids[n], f"row {n}") for n in range(6))
    for pg in (a, b):
        wait_rows(
            pg,
            db,
            "SELECT id::text, content FROM entries WHERE content LIKE 'row %%' ORDER BY id",
            expected,
        )
    c.send(pb.SatPingReq())
    assert c.recv_until(pb.SatPingResp)[0] == frames.ping_resp(b"")
    c.close()
