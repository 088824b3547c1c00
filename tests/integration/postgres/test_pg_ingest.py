"""Source reader + connector against a real Postgres 15: changes arrive through the sink in
commit order, acknowledgements follow durability, connection loss is survived."""

from __future__ import annotations

import json
import time

import gevent
import gevent.event
import psycopg2
import pytest
from loguru import logger

from electric.changes import DeletedRecord, NewRecord, TruncatedRelation, UpdatedRecord
from electric.postgres.connector import Connector
from electric.postgres.lsn import Lsn
from electric.postgres.source import SourceReader
from electric.schema import SchemaRegistry
from tests.support.waiting import wait_until

READER = {
    "status_interval": 1.0,
    "heartbeat_interval": 1.0,
    "reconnect_min": 0.05,
    "reconnect_max": 0.5,
}

SCHEMA = """
CREATE TABLE entries (id uuid PRIMARY KEY, content varchar(64) NOT NULL, content_b text);
ALTER TABLE entries REPLICA IDENTITY FULL;
CREATE TABLE entries_default (id uuid PRIMARY KEY, content varchar(64) NOT NULL, content_b text);
CREATE TABLE typed (a int, b text, n numeric, at timestamptz, u uuid, doc jsonb, arr int[],
                    PRIMARY KEY (b, a));
CREATE TABLE nopk (x text);
"""

U1 = "c0d731ca-0e72-4950-9499-8db83badb051"
U2 = "6f1e1f1e-0000-4000-8000-000000000002"


class CollectingSink:
    def __init__(self, fail_times: int = 0, fail_until: float | None = None):
        self.transactions = []
        self.calls = 0
        self.fail_times = fail_times
        self.fail_until = fail_until

    def __call__(self, tx):
        self.calls += 1
        if self.calls <= self.fail_times or (
            self.fail_until and time.monotonic() < self.fail_until
        ):
            raise ConnectionError("vaxine unavailable (test)")
        self.transactions.append(tx)


@pytest.fixture
def connector_factory(source_db):
    made = []

    def make(sink, name="pg_1", **options):
        c = Connector(
            name,
            source_db.dsn,
            source_db.publication,
            source_db.slot,
            SchemaRegistry(),
            sink,
            reader_options={**READER, **options},
        )
        made.append(c)
        c.start()
        assert c.ready.wait(20), c.status()
        return c

    yield make
    for c in made:
        c.stop()


def query_identity(db, table: str) -> str:
    return db.query("SELECT relreplident FROM pg_class WHERE relname = %s", (table,))[0][0]


def changes_of(sink):
    return [ch for tx in sink.transactions for ch in tx.changes]


def fence(execute, sink,
          sql="INSERT INTO entries_default VALUES (gen_random_uuid(), 'fence', NULL)"):
    """Commit one more transaction (``execute(sql)``) and wait until it is delivered.
    Delivery is in commit order, so a transaction delivered twice (replayed after a
    reconnect) would show up before the fence: counting what precedes it is exact, with no
    sleep. Returns what was delivered before the fence."""
    count = len(sink.transactions)
    execute(sql)
    wait_until(lambda: len(sink.transactions) > count and _is_fence(sink.transactions[-1]),
               what="the fence")
    return sink.transactions[:-1]


def _is_fence(tx):
    record = getattr(tx.changes[0], "record", None) or {}
    return record.get("content") == "fence" or record.get("id") == "-1"


def test_changes_arrive_in_commit_order(source_db, connector_factory):
    db = source_db
    db.execute(SCHEMA)
    sink = CollectingSink()
    c = connector_factory(sink)
    status = c.status()
    assert status["ready"] and status["tables_without_pk"] == ["public.nopk"]
    assert "electric.migrations" not in status["tables"]

    big = "x" * (1024 * 1024 + 7)
    db.execute("INSERT INTO entries VALUES (%s, 'héllo ✓', NULL)", (U1,))
    db.execute(
        "BEGIN;"
        f"INSERT INTO entries_default VALUES ('{U2}', 'a', %s);"
        f"UPDATE entries SET content = 'changed' WHERE id = '{U1}';"
        "INSERT INTO nopk VALUES ('skipped');"
        "INSERT INTO typed VALUES (1, 'k', 3.14159265358979323846, '2022-06-09 09:45:11.642218+00',"
        f" '{U1}', '{{\"a\": [1, 2]}}', ARRAY[1, NULL, 3]);"
        "COMMIT",
        (big,),
    )
    db.execute(f"UPDATE entries_default SET content = 'b' WHERE id = '{U2}'")  # TOAST unchanged
    db.execute(f"DELETE FROM entries WHERE id = '{U1}'")
    db.execute(f"DELETE FROM entries_default WHERE id = '{U2}'")
    db.execute("INSERT INTO nopk VALUES ('only no-pk')")  # empty for Electric, still acked
    db.execute("TRUNCATE typed")
    db.execute("INSERT INTO electric.migrations (version, hash) VALUES ('2', 'h')")
    db.execute("INSERT INTO typed VALUES (2, 'last', NULL, NULL, NULL, NULL, NULL)")

    wait_until(lambda: len(sink.transactions) == 7, what="7 transactions")
    txs = sink.transactions
    assert [len(tx.changes) for tx in txs] == [1, 3, 1, 1, 1, 1, 1]
    assert all(tx.origin == "pg_1" and tx.publication == db.publication for tx in txs)
    assert [tx.lsn for tx in txs] == sorted(tx.lsn for tx in txs)
    assert txs[0].changes == [
        NewRecord(("public", "entries"), {"id": U1, "content": "héllo ✓", "content_b": None})
    ]
    ins, upd, typed = txs[1].changes
    assert ins == NewRecord(
        ("public", "entries_default"), {"id": U2, "content": "a", "content_b": big}
    )
    assert upd == UpdatedRecord(
        ("public", "entries"),
        {"id": U1, "content": "changed", "content_b": None},
        {"id": U1, "content": "héllo ✓", "content_b": None},
    )
    assert typed.record == {
        "a": "1",
        "b": "k",
        "n": "3.14159265358979323846",
        "at": "2022-06-09 09:45:11.642218+00",
        "u": U1,
        "doc": json.dumps({"a": [1, 2]}),
        "arr": "{1,NULL,3}",
    }
    # Created with the default identity, which provisioning turned FULL (per-column merge
    # needs the old row): the unchanged 1 MB TOAST value comes from the old row.
    assert query_identity(db, "entries_default") == "f"
    assert txs[2].changes == [
        UpdatedRecord(("public", "entries_default"), {"id": U2, "content": "b", "content_b": big},
                      {"id": U2, "content": "a", "content_b": big})
    ]
    assert txs[3].changes == [
        DeletedRecord(("public", "entries"), {"id": U1, "content": "changed", "content_b": None})
    ]
    assert txs[4].changes == [DeletedRecord(("public", "entries_default"),
                                            {"id": U2, "content": "b", "content_b": big})]
    assert txs[5].changes == [TruncatedRelation(("public", "typed"))]
    assert txs[6].changes[0].record["b"] == "last"

    # Everything, including the empty and bookkeeping-only transactions, gets acknowledged.
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= txs[-1].lsn, what="ack")
    assert Lsn.parse(c.status()["last_acked_lsn"]) >= txs[-1].lsn
    # WAL of another database: the walsender decodes and skips it, reporting its position in
    # keepalives. Nothing is pending for us, so the lag is 0 (that position is confirmed).
    other = psycopg2.connect(db.cluster.dsn(database="postgres"))
    other.autocommit = True
    with other.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS lag_noise (x int)")
        cur.execute("INSERT INTO lag_noise SELECT generate_series(1, 20000)")
    other.close()
    wait_until(lambda: Lsn.parse(c.reader.status()["server_wal_end"] or "0/0") > txs[-1].lsn,
               what="keepalive past our last transaction")
    wait_until(lambda: c.status()["lag_bytes"] == 0, what="lag 0 when idle")


def test_origin_transactions_dropped_and_acknowledged(source_db, connector_factory):
    db = source_db
    db.execute(SCHEMA)
    sink = CollectingSink()
    connector_factory(sink)
    db.execute("SELECT pg_replication_origin_create('echo_origin')")
    db.execute("SELECT pg_replication_origin_session_setup('echo_origin')")
    db.execute(f"INSERT INTO entries VALUES ('{U1}', 'echo', NULL)")
    db.execute("SELECT pg_replication_origin_session_reset()")
    db.execute(f"INSERT INTO entries VALUES ('{U2}', 'local', NULL)")
    wait_until(lambda: len(sink.transactions) == 1)
    # The echo committed first; had it not been dropped it would be the first delivery.
    assert sink.transactions[0].changes[0].record["content"] == "local"
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= sink.transactions[0].lsn)
    db.execute("SELECT pg_replication_origin_drop('echo_origin')")


def test_failing_sink_holds_the_ack_then_delivers_once(source_db, connector_factory):
    db = source_db
    db.execute(SCHEMA)
    sink = CollectingSink()
    c = connector_factory(sink)
    db.execute(f"INSERT INTO entries VALUES ('{U1}', 'first', NULL)")
    wait_until(lambda: len(sink.transactions) == 1)
    first_end = sink.transactions[0].lsn
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= first_end)

    sink.fail_until = float("inf")  # Vaxine "down" until we say so
    calls_before = sink.calls
    db.execute(f"INSERT INTO entries VALUES ('{U2}', 'second', NULL)")
    db.execute("UPDATE entries SET content_b = 'third'")
    wait_until(lambda: sink.calls >= calls_before + 3, what="retries")
    assert c.status()["sink_retrying"]
    # (Read only now: while idle the reader confirms positions past unrelated WAL.)
    before = db.confirmed_flush_lsn()
    # Several status intervals pass while the sink fails: the slot must not move.
    gevent.sleep(2.0)
    assert db.confirmed_flush_lsn() == before
    assert len(sink.transactions) == 1

    sink.fail_until = 0
    wait_until(lambda: len(sink.transactions) == 3, timeout=20)
    delivered = fence(db.execute, sink)
    assert len(delivered) == 3  # exactly once
    assert [len(tx.changes) for tx in delivered] == [1, 1, 2]
    assert delivered[1].changes[0].record["content"] == "second"
    assert {ch.record["content_b"] for ch in delivered[2].changes} == {"third"}
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= sink.transactions[-1].lsn)
    assert not c.status()["sink_retrying"]
    assert Lsn.parse(before) < sink.transactions[1].lsn  # it never passed the failing one


def test_reader_resumes_after_terminate_backend(source_db, connector_factory):
    db = source_db
    db.execute(SCHEMA)
    sink = CollectingSink()
    c = connector_factory(sink, name="pg_term")
    db.execute(f"INSERT INTO entries VALUES ('{U1}', 'before', NULL)")
    wait_until(lambda: len(sink.transactions) == 1)

    for i in range(3):
        pids = db.query(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND active",
            (db.slot,),
        )
        assert pids, "walsender not found"
        db.execute("SELECT pg_terminate_backend(%s)", (pids[0][0],))
        db.execute(
            "INSERT INTO entries_default VALUES (gen_random_uuid(), %s, NULL)", (f"during {i}",)
        )
        wait_until(lambda i=i: len(sink.transactions) == 2 + i, what=f"tx after kill {i}")
        wait_until(lambda: c.status()["reader_connected"], what="reconnect")

    contents = [tx.changes[0].record["content"] for tx in sink.transactions]
    assert contents == ["before", "during 0", "during 1", "during 2"]
    assert c.status()["reconnects"] >= 3
    assert len(fence(db.execute, sink)) == 4  # nothing delivered twice


def test_postgres_down_at_start(pg_factory):
    cluster = pg_factory("ingest_down")
    cluster.stop()
    lines: list[str] = []
    sink_id = logger.add(lambda m: lines.append(m.record["message"]), level="INFO",
                         filter=lambda r: r["extra"].get("origin") == "pg_down")
    try:
        sink = CollectingSink()
        c = Connector(
            "pg_down",
            cluster.dsn(connect_timeout="2"),
            "all_tables",
            "down_slot",
            SchemaRegistry(),
            sink,
            retry_min=0.2,
            retry_max=0.5,
            reader_options=READER,
        )
        c.start()
        status = wait_until(lambda: c.status()["last_error"] and c.status(),
                            what="the provisioning failure reported")
        assert not status["ready"] and not status["provisioned"]
        cluster.start()
        assert c.ready.wait(20), c.status()
        conn = c.connect()
        with conn.cursor() as cur:
            # Qualified: for the role "electric", "$user" resolves to Electric's own schema.
            cur.execute(
                "CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1)"
            )
        conn.close()
        # Created after start: picked up on its first change.
        wait_until(lambda: len(sink.transactions) == 1)
        assert sink.transactions[0].changes == [NewRecord(("public", "t"), {"id": "1"})]

        # A server restart while streaming: only the reader reconnects, nothing is repeated.
        cluster.stop()
        wait_until(lambda: not c.status()["reader_connected"], what="loss noticed")
        assert c.status()["provisioned"]
        cluster.start()
        wait_until(lambda: c.status()["reader_connected"], what="reconnect", timeout=20)
        conn = c.connect()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO public.t VALUES (2)")
        conn.close()
        wait_until(lambda: len(sink.transactions) == 2)
        def run(sql):
            conn = c.connect()
            with conn.cursor() as cur:
                cur.execute(sql)
            conn.close()

        delivered = fence(run, sink, "INSERT INTO public.t VALUES (-1)")
        assert [tx.changes[0].record["id"] for tx in delivered] == ["1", "2"]
        c.stop()
        # One readable line per event, in an operator's words.
        assert any(line.startswith("Postgres pg_down unreachable (connection refused); "
                                   "retrying in ") for line in lines), lines
        went = [line for line in lines if line.startswith("Postgres pg_down went away (")]
        assert len(went) == 1 and "; reconnecting in " in went[0], lines
        assert any(line.startswith("Postgres pg_down is back after ") for line in lines), lines
        assert not [line for line in lines if "Error" in line or "COPY" in line], lines
    finally:
        logger.remove(sink_id)
        if not cluster.is_running():
            cluster.start()


class FreezingProxy:
    """TCP proxy whose existing connections can be frozen (peer alive, nothing forwarded)."""

    def __init__(self, target_port: int):
        from gevent.server import StreamServer

        self.target_port = target_port
        self.pipes = []  # (client socket, upstream socket, frozen flag holder)
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, client, _address):
        import gevent.socket

        upstream = gevent.socket.create_connection(("127.0.0.1", self.target_port))
        state = {"frozen": False}
        self.pipes.append((client, upstream, state))

        def pump(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    while state["frozen"]:
                        gevent.sleep(0.05)  # swallow nothing, forward nothing
                    dst.sendall(data)
            except OSError:
                pass

        a = gevent.spawn(pump, client, upstream)
        b = gevent.spawn(pump, upstream, client)
        gevent.joinall([a, b], count=1)
        gevent.sleep(0.1)
        if not state["frozen"]:
            client.close()
            upstream.close()

    def freeze_existing(self):
        for _client, _upstream, state in self.pipes:
            state["frozen"] = True

    def close(self):
        self.server.stop()
        for client, upstream, _state in self.pipes:
            client.close()
            upstream.close()


def test_silent_peer_detected_and_stale_walsender_taken_over(source_db):
    db = source_db
    db.execute(SCHEMA)
    proxy = FreezingProxy(db.cluster.port)
    sink = CollectingSink()
    dsn = db.dsn.replace(f"port={db.cluster.port}", f"port={proxy.port}")
    c = Connector(
        "pg_frozen",
        dsn,
        db.publication,
        db.slot,
        SchemaRegistry(),
        sink,
        reader_options={**READER, "heartbeat_interval": 0.5, "dead_after": 2.0},
    )
    try:
        c.start()
        assert c.ready.wait(20), c.status()
        db.execute(f"INSERT INTO entries VALUES ('{U1}', 'before', NULL)")
        wait_until(lambda: len(sink.transactions) == 1)
        gevent.sleep(3.0)  # idle for longer than dead_after: heartbeats keep it alive
        assert c.status()["reconnects"] == 0

        proxy.freeze_existing()  # the old walsender stays connected but hears nothing
        db.execute(f"INSERT INTO entries VALUES ('{U2}', 'after', NULL)")
        started = time.monotonic()
        wait_until(lambda: c.status()["reconnects"] >= 1, what="watchdog", timeout=10)
        assert time.monotonic() - started < 6
        wait_until(lambda: len(sink.transactions) == 2, what="resume", timeout=20)
        assert sink.transactions[1].changes[0].record["content"] == "after"
        assert c.status()["reader_connected"]
    finally:
        c.stop()
        proxy.close()


def test_connection_lost_while_sink_retries_delivers_once(source_db, connector_factory):
    db = source_db
    db.execute(SCHEMA)
    sink = CollectingSink()
    c = connector_factory(sink, name="pg_lost")
    sink.fail_until = float("inf")
    db.execute(f"INSERT INTO entries VALUES ('{U1}', 'x', NULL)")
    wait_until(lambda: c.status()["sink_retrying"], what="retrying")
    before = db.confirmed_flush_lsn()  # no acknowledgement while the sink retries
    pids = db.query(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND active", (db.slot,)
    )
    db.execute("SELECT pg_terminate_backend(%s)", (pids[0][0],))
    gevent.sleep(0.5)
    assert db.confirmed_flush_lsn() == before
    sink.fail_until = 0  # the write now succeeds, but the stream it came from is gone
    wait_until(
        lambda: c.status()["reconnects"] >= 1 and c.status()["reader_connected"],
        what="reconnect after the write",
        timeout=20,
    )
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= sink.transactions[0].lsn)
    assert len(fence(db.execute, sink)) == 1  # the resent copy was recognised, not written again
    assert Lsn.parse(before) < sink.transactions[0].lsn


def test_ddl_outside_migrations_refreshes_the_registry(source_db, connector_factory):
    db = source_db
    db.execute(SCHEMA)
    sink = CollectingSink()
    c = connector_factory(sink, name="pg_ddl")
    db.execute("ALTER TABLE public.entries ADD COLUMN extra int")
    db.execute(f"INSERT INTO entries VALUES ('{U1}', 'a', NULL, 42)")
    wait_until(lambda: len(sink.transactions) == 1)
    assert sink.transactions[0].changes[0].record["extra"] == "42"
    assert [col.name for col in c.tables[("public", "entries")].columns][-1] == "extra"
    assert c.registry.table(("public", "entries")).column("extra").type_name == "int4"


def test_stop_flushes_lazy_acknowledgements(source_db, connector_factory):
    db = source_db
    db.execute(SCHEMA)
    sink = CollectingSink()
    c = connector_factory(sink, name="pg_stop", status_interval=30.0, heartbeat_interval=30.0)
    before = Lsn.parse(db.confirmed_flush_lsn())
    db.execute("INSERT INTO nopk VALUES ('nothing for Electric')")  # acked lazily
    wait_until(lambda: c.reader.last_acked_lsn is not None and c.reader.last_acked_lsn > before)
    acked = c.reader.last_acked_lsn
    c.stop()
    # The walsender applies the final status update as it winds down.
    wait_until(lambda: Lsn.parse(db.confirmed_flush_lsn()) >= acked, timeout=5, what="final ack")


def test_dropped_slot_and_publication_are_recreated(source_db):
    db = source_db
    db.execute("CREATE TABLE public.items (id int PRIMARY KEY)")
    sink = CollectingSink()
    reader = SourceReader(
        "pg_gone", db.dsn, slot=db.slot, publication="gone_pub", sink=sink, **READER
    )
    reader.start()
    try:
        assert wait_until(lambda: reader.status()["connected"], what="recreated slot")
        rows = db.query("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (db.slot,))
        assert rows == [("pgoutput",)]
        db.execute("INSERT INTO public.items VALUES (1)")
        # The publication is only looked up when the first change is decoded.
        wait_until(lambda: len(sink.transactions) == 1, what="change after recreation")
        assert db.query("SELECT 1 FROM pg_publication WHERE pubname = 'gone_pub'") == [(1,)]
    finally:
        reader.stop()


def test_a_crashed_reader_is_restarted_by_the_supervisor_and_nothing_is_lost(
        source_db, connector_factory):
    """A bug in the reader's path (here: the write submission raising something no layer
    handles) kills the reader; the connector's run ends with it and the supervisor alone
    starts it again. The transaction was never acknowledged, so the new reader reads it
    again from the slot and it is delivered exactly once."""
    source_db.execute(SCHEMA)
    sink = CollectingSink()
    crashes = []

    def submit(tx):
        if not crashes:
            crashes.append(tx.lsn)
            raise RuntimeError("bug in the write path (test)")
        result = gevent.event.AsyncResult()
        try:
            sink(tx)
        except Exception as exc:
            result.set_exception(exc)
        else:
            result.set(None)
        return result

    errors = []
    log_sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    try:
        c = connector_factory(sink, submit=submit)
        first_reader = c.reader
        source_db.execute(f"INSERT INTO entries VALUES ('{U1}', 'crashes the reader', NULL)")
        wait_until(lambda: crashes and c.reader is not first_reader and c.is_ready(),
                   what="a new reader streaming after the crash")
        delivered = fence(source_db.execute, sink)
    finally:
        logger.remove(log_sink)
    assert [tx.changes[0].record["content"] for tx in delivered] == ["crashes the reader"]
    assert delivered[0].lsn == crashes[0]
    crash_lines = [e for e in errors if "crashed" in e]
    assert len(crash_lines) == 1, errors
    assert crash_lines[0].startswith("component connector-pg_1 crashed (ReaderCrashed: "
                                     "source reader of pg_1 crashed: "), crash_lines
    assert c.status()["provisioned"] and c.status()["last_error"] is None
