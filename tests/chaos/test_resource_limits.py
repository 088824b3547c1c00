"""Resource limits: a Satellite client that stops reading, a paused subscriber and a stuck
subscriber must not make Electric buffer without bound.

One Electric with two Postgres (A, B). In each scenario a writer pushes 20 000 rows into A
(2 000 transactions of 10 rows, ~130 bytes each: ~2.6 MB of row data, far more once decoded)
while Electric's RSS is sampled every 100 ms. A healthy Satellite client reading the stream
proves the rows went through; afterwards the stuck party must resume and catch up exactly.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

import psycopg2
import psycopg2.extras
import pytest
import websocket

from electric.devenv import DEV_SCHEMA_SQL
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from tests.chaos.harness import StandaloneVaxine, rss_kb
from tests.support.electric import ElectricProcess
from tests.support.postgres import drop_database
from tests.support.waiting import wait_until

pytestmark = pytest.mark.chaos

ROWS = 20_000
PER_TX = 10
# Everything decoded and held at once would be several times the row data (Python objects per
# column); a bounded pipeline stays within buffers of a few MiB plus allocator noise.
RSS_GROWTH_LIMIT_MB = 40


class Env:
    def __init__(self, pg_factory, workdir: str):
        conf = {"synchronous_commit": "on"}
        self.a = pg_factory("chaos_a", extra_conf=conf)
        self.b = pg_factory("chaos_b", extra_conf=conf)
        self.db = f"limits_{uuid.uuid4().hex[:8]}"
        for pg in (self.a, self.b):
            if not pg.is_running():
                pg.start()
            pg.create_database(self.db)
            pg.psql(DEV_SCHEMA_SQL, database=self.db)
        # Vaxine runs as its own process so that Electric's RSS shows Electric's buffering
        # only (the store's own memory grows with the data it holds, by design).
        self.vaxine = StandaloneVaxine(f"{workdir}/vaxine").start()
        self.electric = ElectricProcess(f"{workdir}/electric", env={
            "CONNECTORS": f"pg_a={self.a.url(self.db)};pg_b={self.b.url(self.db)}",
            "POSTGRES_SLOT": f"slot_{self.db}", "LOG_LEVEL": "info", **self.vaxine.env()})
        self.electric.start(timeout=60)
        e = self.electric
        e.wait_for(lambda: all(e.get_json("/api/status")["connectors"].values()), timeout=60,
                   what="connectors ready")
        self.pushed = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.electric.env['WEBSOCKET_PORT']}/ws"

    def push(self, n: int = ROWS) -> None:
        conn = psycopg2.connect(self.a.dsn(database=self.db))
        try:
            with conn.cursor() as cur:
                for start in range(0, n, PER_TX):
                    rows = [(str(uuid.uuid4()), f"row {self.pushed + i} " + "c" * 50, "d" * 60)
                            for i in range(start, min(n, start + PER_TX))]
                    psycopg2.extras.execute_values(
                        cur, "INSERT INTO entries_default (id, content, content_b) VALUES %s",
                        rows)
                    conn.commit()
        finally:
            conn.close()
        self.pushed += n

    def count(self, pg) -> int:
        conn = psycopg2.connect(pg.dsn(database=self.db) + " connect_timeout=5")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM entries_default")
                return cur.fetchone()[0]
        finally:
            conn.close()

    def close(self) -> None:
        self.electric.kill()
        self.vaxine.kill()
        for pg in (self.a, self.b):
            drop_database(pg, self.db)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, other: int | None = None):
        super().__init__(daemon=True)
        self.pid = pid
        self.other = other
        self.samples: list[int] = []
        self.other_samples: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.samples.append(rss_kb(self.pid))
            if self.other:
                self.other_samples.append(rss_kb(self.other))
            self.stop_event.wait(0.1)

    def stop(self) -> tuple[int, int]:
        self.stop_event.set()
        self.join(5)
        if self.other_samples:
            print(f"\n  (standalone vaxine RSS {min(self.other_samples) // 1024} -> "
                  f"{max(self.other_samples) // 1024} MiB)", end="")
        return self.samples[0], max(self.samples)


class StreamReader:
    """A Satellite client following the outgoing stream (optionally not reading at all)."""

    def __init__(self, url: str, client_id: str, lsn: bytes | None = None,
                 tiny_buffer: bool = False):
        opts = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),) if tiny_buffer else ()
        self.ws = websocket.create_connection(url, timeout=10, sockopt=opts)
        self.ws.send_binary(frames.encode(pb.SatAuthReq(id=client_id, token="u")))
        kinds = [type(self.recv()) for _ in range(2)]
        assert kinds == [pb.SatAuthResp, pb.SatInStartReplicationReq], kinds
        self.ws.send_binary(frames.encode(pb.SatInStartReplicationResp()))
        req = (pb.SatInStartReplicationReq(lsn=lsn) if lsn
               else pb.SatInStartReplicationReq(options=[frames.OPT_FIRST_LSN]))
        self.ws.send_binary(frames.encode(req))
        self.ids: set[str] = set()
        self.lsn = lsn
        self.relations: dict[int, str] = {}

    def recv(self):
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return frames.decode(data)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError("closed by the server")

    def read_until(self, n: int, timeout: float) -> bool:
        """Apply the stream until ``n`` distinct entries_default ids were seen; False when
        the server closed the socket first."""
        deadline = time.monotonic() + timeout
        current = None
        while len(self.ids) < n:
            assert time.monotonic() < deadline, f"only {len(self.ids)} of {n} rows streamed"
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = self.recv()
            except (ConnectionError, websocket.WebSocketException, OSError):
                return False
            if isinstance(msg, pb.SatRelation):
                self.relations[msg.relation_id] = msg.table_name
            elif isinstance(msg, pb.SatPingReq):
                self.ws.send_binary(frames.encode(pb.SatPingResp(lsn=self.lsn or b"")))
            elif isinstance(msg, pb.SatOpLog):
                for op in msg.ops:
                    kind = op.WhichOneof("op")
                    if kind == "begin":
                        current = op.begin.lsn
                    elif kind == "commit":
                        self.lsn = current
                    elif kind in ("update", "insert"):
                        body = getattr(op, kind)
                        if self.relations.get(body.relation_id) == "entries_default":
                            self.ids.add(body.row_data[0].decode())
        return True

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:  # noqa: BLE001
            pass


def satellite_insert(url: str, row: tuple[str, str, str]) -> None:
    """Write one ``entries`` row as a Satellite client; returns once it is acked."""
    ws = websocket.create_connection(url, timeout=10)
    try:
        ws.send_binary(frames.encode(pb.SatAuthReq(id=f"writer-{uuid.uuid4()}", token="u")))
        ws.recv(), ws.recv()  # SatAuthResp, the server's start request
        ws.send_binary(frames.encode(pb.SatInStartReplicationResp()))
        ws.send_binary(frames.encode(pb.SatRelation(
            schema_name="public", table_name="entries", relation_id=1,
            columns=[pb.SatRelationColumn(name=c, type="text") for c in
                     ("id", "content", "content_b")])))
        ws.send_binary(frames.encode(pb.SatOpLog(ops=[
            pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=int(time.time() * 1000),
                                              lsn=b"1")),
            pb.SatTransOp(insert=pb.SatOpInsert(relation_id=1,
                                                row_data=[v.encode() for v in row])),
            pb.SatTransOp(commit=pb.SatOpCommit())])))
        for _ in range(20):
            msg = frames.decode(ws.recv())
            if isinstance(msg, pb.SatPingResp) and msg.lsn == b"1":
                return
        raise AssertionError("satellite write not acked")
    finally:
        ws.close()


def entries_row(pg, db: str, rid: str):
    conn = psycopg2.connect(pg.dsn(database=db) + " connect_timeout=5")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id::text, content, content_b FROM entries WHERE id = %s", (rid,))
            return cur.fetchone()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def env(pg_factory, tmp_path_factory):
    e = Env(pg_factory, str(tmp_path_factory.mktemp("limits")))
    yield e
    e.close()


def measured_push(env: Env, healthy: StreamReader) -> tuple[int, int]:
    """Push ROWS rows while sampling RSS until a healthy reader has seen them all."""
    sampler = RssSampler(env.electric.proc.pid, env.vaxine.proc.pid)
    sampler.start()
    try:
        env.push()
        assert healthy.read_until(env.pushed, timeout=180), "healthy reader was cut off"
    finally:
        low, high = sampler.stop()
    return low, high


def satellite_clients(env: Env) -> set[str]:
    status = env.electric.get_json("/api/status")
    satellite = status.get("detail", status)["satellite"]
    return {c.get("client_id") for c in satellite["clients"]}


def report(name: str, low: int, high: int) -> None:
    print(f"\n{name}: RSS {low // 1024} MiB -> peak {high // 1024} MiB "
          f"(+{(high - low) // 1024} MiB) while {ROWS} rows went through")
    assert (high - low) < RSS_GROWTH_LIMIT_MB * 1024, f"{name}: RSS grew by {high - low} kB"


def test_control_push_without_stuck_parties(env):
    """The same load with everybody reading: warms the caches and the shared tail's ring of
    recent transactions, so the scenarios below measure only what a stuck party adds."""
    healthy = StreamReader(env.ws_url, f"healthy-{uuid.uuid4()}")
    low, high = measured_push(env, healthy)
    print(f"\ncontrol: RSS {low // 1024} MiB -> peak {high // 1024} MiB "
          f"(+{(high - low) // 1024} MiB) while {ROWS} rows went through")
    wait_until(lambda: env.count(env.b) == env.pushed, 120, "Postgres B has every row",
               step=0.2, ignore=(Exception,))
    healthy.close()


def test_stuck_satellite_client_is_bounded_then_resumes(env):
    healthy = StreamReader(env.ws_url, f"healthy-{uuid.uuid4()}")
    healthy.read_until(env.pushed, timeout=60)
    stuck_id = f"stuck-{uuid.uuid4()}"
    stuck = StreamReader(env.ws_url, stuck_id, tiny_buffer=True)  # then never reads
    low, high = measured_push(env, healthy)
    report("stuck satellite client", low, high)
    wait_until(lambda: env.count(env.b) == env.pushed, 120, "Postgres B has every row",
               step=0.2, ignore=(Exception,))
    # The server cuts the silent socket (send timeout) rather than buffer for it forever.
    wait_until(lambda: stuck_id not in satellite_clients(env), 60,
               "stuck client disconnected by the server",
               step=0.2, ignore=(Exception,))
    # It resumes: reads what reached it, then reconnects from the last lsn it applied.
    stuck.read_until(env.pushed, timeout=30)
    stuck.close()
    again = StreamReader(env.ws_url, stuck_id, lsn=stuck.lsn)
    again.ids = stuck.ids
    assert again.read_until(env.pushed, timeout=120)
    assert len(again.ids) == env.pushed
    again.close()
    healthy.close()


def test_paused_subscriber_is_bounded_then_resumes(env):
    healthy = StreamReader(env.ws_url, f"healthy-{uuid.uuid4()}")
    healthy.read_until(env.pushed, timeout=120)
    env.b.psql('ALTER SUBSCRIPTION "pg_b" DISABLE', database=env.db)
    try:
        before = env.count(env.b)
        low, high = measured_push(env, healthy)
        assert env.count(env.b) == before  # really paused
    finally:
        env.b.psql('ALTER SUBSCRIPTION "pg_b" ENABLE', database=env.db)
    report("paused subscriber", low, high)
    wait_until(lambda: env.count(env.b) == env.pushed, 180, "Postgres B caught up",
               step=0.2, ignore=(Exception,))
    healthy.close()


def test_stuck_subscriber_is_bounded_then_resumes(env):
    """B's apply worker blocks on a table lock: it stops reading from Electric mid-stream."""
    healthy = StreamReader(env.ws_url, f"healthy-{uuid.uuid4()}")
    healthy.read_until(env.pushed, timeout=120)
    locker = psycopg2.connect(env.b.dsn(database=env.db))
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE entries_default IN ACCESS EXCLUSIVE MODE")
        low, high = measured_push(env, healthy)
        # The other subscriber is not held up by the stuck one.
        row = (str(uuid.uuid4()), "while B is stuck", "x")
        satellite_insert(env.ws_url, row)
        wait_until(lambda: entries_row(env.a, env.db, row[0]) == row, 60,
                   "a Satellite row reaches Postgres A while B is stuck",
                   step=0.2, ignore=(Exception,))
        time.sleep(2)  # let whatever would pile up pile up
        high = max(high, rss_kb(env.electric.proc.pid))
    finally:
        locker.rollback()
        locker.close()
    report("stuck subscriber", low, high)
    wait_until(lambda: env.count(env.b) == env.pushed, 180, "Postgres B caught up",
               step=0.2, ignore=(Exception,))
    assert entries_row(env.b, env.db, row[0]) == row
    healthy.close()
