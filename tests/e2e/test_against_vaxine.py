"""The suite that runs against any Vaxine (marker ``vaxine_suite``).

``make tests-vaxine VAXINE=host:api_port:replication_port`` runs it against that server (a
real Vaxine built from electric-sql/vaxine, see docs/testing-against-vaxine.md); ``make
tests`` runs it against a fresh standalone ``bin/electric vaxine`` per test. Electric itself
is started with ``VAXINE_HOST``/``VAXINE_API_PORT``/``VAXINE_REPLICATION_PORT`` pointing at
it, so everything goes through Vaxine's two wire protocols:

* the wire golden script (the recorded transcripts, replayed and compared frame by frame);
* Postgres end to end: inserts, updates, deletes and a multi-row transaction both ways;
  (with a shared Vaxine a new subscriber receives earlier runs' rows too, so each check
  looks at the test's own rows);
* Satellite end to end: a websocket client's transaction reaches both Postgres (acked), a
  Postgres row and a delete reach the client.
"""

from __future__ import annotations

import struct
import uuid

import pytest
from gevent import socket

from electric.devenv import DEV_SCHEMA_SQL
from electric.pb import satellite_pb2 as pb
from electric.vaxine import etf, walproto
from tests.e2e.test_replication import scrape
from tests.integration.satellite.sat_harness import SatClient, delete, insert, oplog
from tests.integration.vaxine.test_vaxine_golden_replay import (
    Replayer,
    recv_frame,
    replay_s1_to_s7,
    replay_s8_after_restart,
)
from tests.support import vaxine as targets
from tests.support.postgres import drop_database, query, wait_rows

pytestmark = pytest.mark.vaxine_suite


@pytest.fixture
def vaxine():
    target = targets.external() or targets.standalone()
    yield target
    targets.discard(target)


def _log_is_empty(target) -> bool:
    """Nothing streams from offset 0 within a short wait: a Vaxine on an empty data dir."""
    sock = socket.create_connection((target.host, target.replication_port), timeout=5)
    try:
        ref, request = walproto.start_request(0)
        sock.sendall(struct.pack(">I", len(request)) + request)
        walproto.parse_start_response(etf.decode(recv_frame(sock)), ref)
        try:
            recv_frame(sock, timeout=1.0)
        except TimeoutError:
            return True
        return False
    finally:
        sock.close()


def test_wire_golden_script(vaxine):
    if not _log_is_empty(vaxine):
        pytest.fail("the golden script needs a Vaxine on an empty data directory (it "
                    "compares the stream from offset 0): start it fresh, run the suite first")
    replayer = Replayer(vaxine)
    from_zero = replay_s1_to_s7(replayer)
    if vaxine.external:
        # S8 restarts the server on its data dir: the suite cannot restart someone else's
        # Vaxine (docs/testing-against-vaxine.md says how to run S8 by hand).
        print("S1-S7 passed; S8 (restart) is only run against a Vaxine the suite starts")
        return
    vaxine.restart()
    replay_s8_after_restart(replayer, from_zero)


@pytest.fixture
def two_postgres(pg_factory):
    db = f"vx_{uuid.uuid4().hex[:8]}"
    pgs = [pg_factory("e2e_a"), pg_factory("e2e_b")]
    for pg in pgs:
        pg.create_database(db)
        pg.psql(DEV_SCHEMA_SQL, database=db)
    yield pgs, db
    for pg in pgs:
        drop_database(pg, db)


@pytest.fixture
def electric(vaxine, two_postgres, electric_factory):
    (a, b), db = two_postgres
    process = electric_factory(env={"CONNECTORS": f"pg_a={a.url(db)};pg_b={b.url(db)}",
                                    "POSTGRES_SLOT": f"slot_{db}", **vaxine.env()})
    process.wait_for(lambda: all(process.get_json("/api/status")["connectors"].values()),
                     timeout=60, what="both connectors ready")
    assert process.get_json("/api/status")["detail"]["vaxine"]["mode"] == "external"
    return process


def _check_clean(electric) -> None:
    status = electric.get_json("/api/status")
    assert status["vaxine"] is True and status["detail"]["blocked"] == []
    metrics = scrape(electric)
    # (table_not_at_subscriber may count: a shared Vaxine can hold tables these Postgres lack)
    for reason in ("truncate", "table_not_replicated"):
        assert metrics[("electric_changes_skipped_total", (("reason", reason),))] == 0.0
    assert metrics[("electric_log_readers_blocked", (("reader", "publisher"),))] == 0.0
    log = electric.log(tail=100000)
    assert "[ERROR]" not in log and "skipping change" not in log, log[-3000:]


def test_postgres_both_ways(two_postgres, electric):
    (a, b), db = two_postgres
    id1, id2 = str(uuid.uuid4()), str(uuid.uuid4())
    query(a, db, "INSERT INTO entries (id, content) VALUES (%s, 'from a')", (id1,))
    query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'from b')", (id2,))
    both = sorted([(id1, "from a"), (id2, "from b")])
    # A shared Vaxine keeps earlier runs' rows (a new subscriber gets the whole log): every
    # check looks at this test's own rows only.
    for pg in (a, b):
        wait_rows(pg, db, "SELECT id::text, content FROM entries WHERE id IN (%s, %s) "
                  "ORDER BY id", both, args=(id1, id2))
    query(b, db, "UPDATE entries SET content = 'changed on b' WHERE id = %s", (id1,))
    wait_rows(a, db, "SELECT content FROM entries WHERE id = %s", [("changed on b",)], args=(id1,))
    query(a, db, "DELETE FROM entries WHERE id = %s", (id2,))
    wait_rows(b, db, "SELECT count(*) FROM entries WHERE id = %s", [(0,)], args=(id2,))
    # one transaction of 200 rows arrives whole
    query(a, db, "INSERT INTO entries_default (content) "
                 "SELECT %s || g FROM generate_series(1, 200) g", (f"bulk {db} ",))
    wait_rows(b, db, "SELECT count(*) FROM entries_default WHERE content LIKE %s",
              [(200,)], args=(f"bulk {db} %",))
    _check_clean(electric)


def _entries_relation() -> pb.SatRelation:
    return pb.SatRelation(schema_name="public", table_name="entries", relation_id=0,
                          columns=[pb.SatRelationColumn(name=c, type="text")
                                   for c in ("id", "content", "content_b")])


def test_satellite_both_ways(two_postgres, electric):
    (a, b), db = two_postgres
    client = SatClient(f"ws://127.0.0.1:{electric.env['WEBSOCKET_PORT']}/ws", timeout=10)
    try:
        client.auth(client_id=f"vx-suite-{db}")
        client.send(_entries_relation())
        own = str(uuid.uuid4())
        client.send(oplog(b"1", insert(0, own.encode(), b"from satellite", b"")))
        ack, _ = client.recv_until(pb.SatPingResp, timeout=15)
        assert ack.lsn == b"1"
        for pg in (a, b):
            wait_rows(pg, db, "SELECT content FROM entries WHERE id = %s",
                      [("from satellite",)], args=(own,))

        client.send(pb.SatInStartReplicationReq(lsn=b"eof"))
        client.recv_until(pb.SatInStartReplicationResp)
        from_pg = str(uuid.uuid4())
        query(b, db, "INSERT INTO entries (id, content) VALUES (%s, 'from pg_b')", (from_pg,))
        query(a, db, "DELETE FROM entries WHERE id = %s", (own,))
        seen: list[tuple[str, bytes]] = []
        while ("insert", from_pg.encode()) not in seen or ("delete", own.encode()) not in seen:
            msg, _ = client.recv_until(pb.SatOpLog, timeout=30)
            for op in msg.ops:
                kind = op.WhichOneof("op")
                if kind in ("insert", "update"):
                    seen.append(("insert", getattr(op, kind).row_data[0]))
                elif kind == "delete":
                    seen.append(("delete", op.delete.old_row_data[0]))
        client.send(oplog(b"2", delete(0, from_pg.encode(), b"from pg_b", b"")))
        ack, _ = client.recv_until(pb.SatPingResp, timeout=15)
        assert ack.lsn == b"2"
        for pg in (a, b):
            wait_rows(pg, db, "SELECT count(*) FROM entries WHERE id IN (%s, %s)", [(0,)],
                      args=(own, from_pg))
    finally:
        client.close()
    _check_clean(electric)
