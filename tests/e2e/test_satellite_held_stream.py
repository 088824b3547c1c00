"""A Satellite client's stream is held, never skipped, while the schema registry does not
know a table: real Postgres, Electric as a process (embedded store), a Python client.

Electric restarts while its Postgres is down, so the registry stays empty (connectors
describe their tables when they connect), and a client resumes from before a delete. The
delete must not go out as an empty transaction (the client would store its lsn and keep
the row for good): the stream waits at it, says so once at ERROR naming the table and the
client, shows it in /api/status and /metrics, and delivers it once Postgres is back.
"""

from __future__ import annotations

import uuid

import pytest
import websocket

from electric.devenv import DEV_SCHEMA_SQL
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from tests.e2e.test_replication import scrape
from tests.integration.satellite.sat_harness import SatClient
from tests.support.postgres import drop_database, query

CLIENT = "held-device"


@pytest.fixture
def pg_db(pg_factory):
    db = f"held_{uuid.uuid4().hex[:8]}"
    pg = pg_factory("held_stream")
    pg.create_database(db)
    pg.psql(DEV_SCHEMA_SQL, database=db)
    yield pg, db
    if not pg.is_running():  # the test stopped it and failed before starting it again
        pg.start()
    drop_database(pg, db)


def oplog_with(c: SatClient, kind: str, row_id: str) -> pb.SatOpLog:
    """The next SatOpLog with a ``kind`` operation on row ``row_id`` (answers pings). Rows
    from Postgres reach clients as upserts (``update``), deletes as ``delete``."""
    while True:
        log, _ = c.recv_until(pb.SatOpLog, timeout=30)
        for op in log.ops:
            if op.WhichOneof("op") == kind:
                data = op.update.row_data if kind == "update" else op.delete.old_row_data
                if bytes(data[0]) == row_id.encode():
                    return log


def answer_pings(c: SatClient) -> None:
    """Read for a moment: answer the server's pings; nothing else may arrive."""
    try:
        msg = c.recv(0.2)
    except (TimeoutError, websocket.WebSocketTimeoutException):
        return
    assert isinstance(msg, pb.SatPingReq), f"sent while the stream is held: {msg}"
    c.send(frames.ping_resp(None))


def test_resumed_stream_waits_for_the_table_and_loses_nothing(pg_db, electric_factory):
    pg, db = pg_db
    electric = electric_factory(env={"CONNECTORS": f"pg_a={pg.url(db)}",
                                     "POSTGRES_SLOT": f"slot_{db}"})
    electric.wait_for(lambda: all(electric.get_json("/api/status")["connectors"].values()),
                      timeout=60, what="connector ready")
    url = f"ws://127.0.0.1:{electric.env['WEBSOCKET_PORT']}/ws"
    row = str(uuid.uuid4())
    query(pg, db, "INSERT INTO entries (id, content) VALUES (%s, 'kept?')", (row,))

    c = SatClient(url, timeout=10)
    c.auth(client_id=CLIENT)
    c.send(pb.SatInStartReplicationReq(options=[frames.OPT_FIRST_LSN]))
    seen_insert = oplog_with(c, "update", row).ops[0].begin.lsn
    query(pg, db, "DELETE FROM entries WHERE id = %s", (row,))
    oplog_with(c, "delete", row)  # in the log: a client resuming before it must get it
    c.close()

    pg.stop()
    electric.kill()
    electric.start()  # the registry is empty until the connector reaches Postgres
    c = SatClient(url, timeout=10)
    c.auth(client_id=CLIENT)
    c.send(pb.SatInStartReplicationReq(lsn=seen_insert))
    c.recv_until(pb.SatInStartReplicationResp)

    def held():
        answer_pings(c)
        blocked = electric.get_json("/api/status")["detail"]["blocked"]
        return [b for b in blocked if b.get("client") == CLIENT]

    (report,) = electric.wait_for(held, timeout=60, what="the stream reported as held")
    assert report["tables"] == "public.entries"
    metrics = scrape(electric)
    assert metrics[("electric_log_readers_blocked", (("reader", "satellite"),))] == 1

    pg.start()  # the connector describes the table: the stream goes on
    log = oplog_with(c, "delete", row)
    assert [op.WhichOneof("op") for op in log.ops] == ["begin", "delete", "commit"]
    electric.wait_for(lambda: not electric.get_json("/api/status")["detail"]["blocked"],
                      timeout=30, what="the hold released")
    assert scrape(electric)[("electric_log_readers_blocked", (("reader", "satellite"),))] == 0
    errors = [line for line in electric.log(tail=100_000).splitlines()
              if "unknown to the schema registry" in line]
    assert len(errors) == 1, errors  # said once, naming the table and the client
    assert "ERROR" in errors[0] and "public.entries" in errors[0] and CLIENT in errors[0]
    c.close()
