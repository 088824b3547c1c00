"""Fault-injection harness: sustained two-way load while processes are killed and restarted.

Writers
  * ``PgWriter`` — one thread per Postgres, psycopg2, random transactions of 1–3 changes
    (insert a fresh uuid row, update or delete one of *its own* rows) on ``entries`` and
    ``entries_default``. Its model of what it committed is exact: a transaction whose COMMIT
    failed (connection cut by a restart) is resolved afterwards with ``txid_status``.
  * ``SatWriter`` — one thread per Satellite client (websocket-client, the real protocol):
    writes its own rows, keeps every transaction until the server acks it with
    ``SatPingResp{lsn}``, resends whatever the server's start request says is not durable,
    and subscribes to the outgoing stream (resuming from the last applied ``SatOpBegin.lsn``)
    to keep a local view of all rows, like a real SQLite client.

Every writer only touches rows it created, so the CRDT merge of all writes is simply the
union of each writer's final state: that is the expected content of every Postgres and of
every Satellite client's view.

Checks made while running: a Satellite client's stored lsn (the server's start request after
a reconnect) is never behind a transaction the server already acked (decision 4: ack only
after the lsn is durable).
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg2
import websocket

from electric.devenv import free_port
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from tests.support.electric import ROOT
from tests.support.waiting import wait_until

TABLES = ("entries", "entries_default")
COLUMNS = ("id", "content", "content_b")

Key = tuple[str, str]  # (table, id)
Row = tuple[str, str, str]  # (id, content, content_b)


def _now_ms() -> int:
    return int(time.time() * 1000)



# -- Postgres writer ------------------------------------------------------------------------


class PgWriter(threading.Thread):
    """Random transactions on one Postgres; an exact model of what was committed."""

    def __init__(self, name: str, dsn: str, seed: int, pause: tuple[float, float] = (0.02, 0.06)):
        super().__init__(name=f"pg-writer-{name}", daemon=True)
        self.label = name
        self.dsn = dsn + " connect_timeout=5 options='-c statement_timeout=10000'"
        self.rng = random.Random(seed)
        self.pause = pause
        self.stop_event = threading.Event()
        self.model: dict[Key, Row] = {}
        self.committed = 0
        self.aborted = 0
        self.in_doubt = 0
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self._conn = None
        self._seq = 0

    # connection handling: reconnect (bounded by the caller's deadline) after any failure
    def _connect(self):
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.dsn)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
        self._conn = None

    def _plan(self) -> list[tuple[str, Key, Row | None]]:
        """1–3 changes on distinct rows of this writer: ('insert'|'update'|'delete', key, row)."""
        ops: list[tuple[str, Key, Row | None]] = []
        touched: set[Key] = set()
        live = list(self.model)
        for _ in range(self.rng.randint(1, 3)):
            self._seq += 1
            choice = self.rng.random()
            candidates = [k for k in live if k not in touched]
            if choice < 0.5 or not candidates or len(live) < 5:
                table = self.rng.choice(TABLES)
                rid = str(uuid.uuid4())
                row = (rid, f"{self.label} ins {self._seq}", f"b{self._seq}")
                ops.append(("insert", (table, rid), row))
                touched.add((table, rid))
            elif choice < 0.85:
                key = self.rng.choice(candidates)
                row = (key[1], f"{self.label} upd {self._seq}", f"u{self._seq}")
                ops.append(("update", key, row))
                touched.add(key)
            else:
                key = self.rng.choice(candidates)
                ops.append(("delete", key, None))
                touched.add(key)
        return ops

    def _apply(self, ops) -> None:
        for kind, key, row in ops:
            if kind == "delete":
                del self.model[key]
            else:
                self.model[key] = row

    def _one_transaction(self) -> None:
        conn = self._connect()
        ops = self._plan()
        xid = None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT txid_current()")
                xid = cur.fetchone()[0]
                for kind, (table, rid), row in ops:
                    if kind == "insert":
                        cur.execute(f"INSERT INTO {table} (id, content, content_b) "
                                    "VALUES (%s, %s, %s)", row)
                    elif kind == "update":
                        cur.execute(f"UPDATE {table} SET content = %s, content_b = %s "
                                    "WHERE id = %s", (row[1], row[2], rid))
                    else:
                        cur.execute(f"DELETE FROM {table} WHERE id = %s", (rid,))
        except psycopg2.Error as exc:
            # Failed before COMMIT was sent: nothing of it is committed.
            self.aborted += 1
            self._note(exc)
            self._drop()
            return
        try:
            conn.commit()
        except psycopg2.Error as exc:
            self._note(exc)
            self._drop()
            self.in_doubt += 1
            if self._resolve(xid):
                self._apply(ops)
                self.committed += 1
            else:
                self.aborted += 1
            return
        self._apply(ops)
        self.committed += 1

    def _resolve(self, xid: int, timeout: float = 90.0) -> bool:
        """Whether transaction ``xid`` committed (COMMIT failed on the client side)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                conn = self._connect()
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT txid_status(%s)", (xid,))
                    status = cur.fetchone()[0]
                conn.autocommit = False
                if status in ("committed", "aborted"):
                    return status == "committed"
                if status is None:
                    raise AssertionError(f"{self.label}: txid_status({xid}) is NULL")
            except psycopg2.Error:
                self._drop()
            time.sleep(0.2)
        raise AssertionError(f"{self.label}: could not resolve in-doubt transaction {xid}")

    def _note(self, exc: Exception) -> None:
        if len(self.errors) < 50:
            self.errors.append(f"{type(exc).__name__}: {str(exc).strip()[:120]}")

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    self._one_transaction()
                except psycopg2.Error as exc:  # connect failed: Postgres restarting
                    self._note(exc)
                    self._drop()
                    self.stop_event.wait(0.2)
                    continue
                self.stop_event.wait(self.rng.uniform(*self.pause))
        except BaseException as exc:  # surfaced by the test
            self.failure = exc
        finally:
            self._drop()

    def stop(self, timeout: float = 100.0) -> None:
        self.stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not stop"
        if self.failure is not None:
            raise self.failure


# -- Satellite writer ----------------------------------------------------------------------


class _Gone(Exception):
    """The websocket went away (server killed, closed by the server, protocol error)."""


@dataclass
class SatTx:
    n: int
    ops: list[tuple[str, Key, Row]]

    @property
    def lsn(self) -> bytes:
        return str(self.n).encode()


class SatWriter(threading.Thread):
    """A Satellite client: writes its own rows (acked, resent until durable) and keeps a view
    of every row from the outgoing stream."""

    REL_IDS = {"entries": 1, "entries_default": 2}

    def __init__(self, client_id: str, url: Callable[[], str], seed: int,
                 pause: tuple[float, float] = (0.03, 0.08), window: int = 16):
        super().__init__(name=f"sat-writer-{client_id}", daemon=True)
        self.client_id = client_id
        self.url = url
        self.rng = random.Random(seed)
        self.pause = pause
        self.window = window
        self.stop_event = threading.Event()  # stop generating; keep going until all acked
        self.quit_event = threading.Event()  # leave now
        self.model: dict[Key, Row] = {}
        self.txs: list[SatTx] = []
        self.acked = 0  # highest acked tx number
        self.ack_count = 0
        self.view: dict[Key, Row] = {}
        self.stream_lsn: bytes | None = None
        self.stream_txs = 0
        self.connects = 0
        self.resent = 0
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._relations: dict[int, tuple[str, list[str]]] = {}
        self._seq = 0

    # -- generation ------------------------------------------------------------------------
    def _new_tx(self) -> SatTx:
        ops: list[tuple[str, Key, Row]] = []
        touched: set[Key] = set()
        for _ in range(self.rng.randint(1, 3)):
            self._seq += 1
            candidates = [k for k in self.model if k not in touched]
            choice = self.rng.random()
            if choice < 0.5 or len(candidates) < 5:
                table = self.rng.choice(TABLES)
                rid = str(uuid.uuid4())
                row = (rid, f"{self.client_id} ins {self._seq}", f"b{self._seq}")
                ops.append(("insert", (table, rid), row))
            elif choice < 0.85:
                key = self.rng.choice(candidates)
                row = (key[1], f"{self.client_id} upd {self._seq}", f"u{self._seq}")
                ops.append(("update", key, row))
            else:
                key = self.rng.choice(candidates)
                ops.append(("delete", key, self.model[key]))
            kind, key, row = ops[-1]
            touched.add(key)
            if kind == "delete":
                del self.model[key]
            else:
                self.model[key] = row
        tx = SatTx(len(self.txs) + 1, ops)
        self.txs.append(tx)
        with self._lock:  # like a local SQLite write: the client's own view changes at once
            for kind, key, row in ops:
                if kind == "delete":
                    self.view.pop(key, None)
                else:
                    self.view[key] = row
        return tx

    @classmethod
    def _encode(cls, tx: SatTx) -> bytes:
        ops = [pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=_now_ms(), lsn=tx.lsn))]
        for kind, (table, _rid), row in tx.ops:
            values = [v.encode() for v in row]
            rel = cls.REL_IDS[table]
            if kind == "insert":
                ops.append(pb.SatTransOp(insert=pb.SatOpInsert(relation_id=rel, row_data=values)))
            elif kind == "update":
                ops.append(pb.SatTransOp(update=pb.SatOpUpdate(relation_id=rel, row_data=values)))
            else:
                ops.append(pb.SatTransOp(delete=pb.SatOpDelete(relation_id=rel,
                                                               old_row_data=values)))
        ops.append(pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=_now_ms())))
        return frames.encode(pb.SatOpLog(ops=ops))

    # -- one connection ------------------------------------------------------------------
    def _recv(self, ws, timeout: float):
        ws.settimeout(timeout)
        while True:
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except (websocket.WebSocketException, OSError) as exc:
                raise _Gone(f"recv: {type(exc).__name__}: {exc}") from None
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return frames.decode(data)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise _Gone("closed by the server")
            if opcode == websocket.ABNF.OPCODE_TEXT:
                raise AssertionError(f"server sent a text frame {data!r}")

    def _handshake(self, ws) -> int:
        """Auth, answer the server's start request; returns the server's stored tx number."""
        ws.send_binary(frames.encode(pb.SatAuthReq(id=self.client_id, token="chaos-user")))
        start = None
        deadline = time.monotonic() + 10
        while start is None:
            if time.monotonic() > deadline:
                raise _Gone("no start request from the server")
            msg = self._recv(ws, 10)
            if isinstance(msg, pb.SatErrorResp):
                raise _Gone(f"error {msg.error_type} during handshake")
            if isinstance(msg, pb.SatPingReq):
                ws.send_binary(frames.encode(pb.SatPingResp(lsn=self.stream_lsn or b"")))
            if isinstance(msg, pb.SatInStartReplicationReq):
                start = msg
        stored = int(start.lsn) if start.lsn else 0
        if stored < self.acked:
            self.violations.append(f"{self.client_id}: server start lsn {stored} is behind "
                                   f"acked {self.acked} (ack before durable)")
        ws.send_binary(frames.encode(pb.SatInStartReplicationResp()))
        for table, rel in self.REL_IDS.items():
            ws.send_binary(frames.encode(pb.SatRelation(
                schema_name="public", table_name=table, relation_id=rel,
                columns=[pb.SatRelationColumn(name="id", type="uuid"),
                         pb.SatRelationColumn(name="content", type="varchar"),
                         pb.SatRelationColumn(name="content_b", type="varchar")])))
        if self.stream_lsn is None:
            req = pb.SatInStartReplicationReq(options=[frames.OPT_FIRST_LSN])
        else:
            req = pb.SatInStartReplicationReq(lsn=self.stream_lsn)
        ws.send_binary(frames.encode(req))
        return stored

    def _reader(self, ws, gone: threading.Event) -> None:
        """Acks, pings and the outgoing stream, until the socket goes away."""
        current: bytes | None = None
        try:
            while not self.quit_event.is_set():
                try:
                    msg = self._recv(ws, 60)
                except _Gone as exc:
                    self._note(str(exc))
                    return
                if isinstance(msg, pb.SatPingResp):
                    if msg.lsn:
                        with self._lock:
                            self.acked = max(self.acked, int(msg.lsn))
                            self.ack_count += 1
                elif isinstance(msg, pb.SatPingReq):
                    ws.send_binary(frames.encode(pb.SatPingResp(lsn=self.stream_lsn or b"")))
                elif isinstance(msg, pb.SatRelation):
                    self._relations[msg.relation_id] = (msg.table_name,
                                                        [c.name for c in msg.columns])
                elif isinstance(msg, pb.SatOpLog):
                    for op in msg.ops:
                        current = self._apply_stream_op(op, current)
                elif isinstance(msg, pb.SatErrorResp):
                    self._note(f"SatErrorResp {msg.error_type}")
                    return
                elif isinstance(msg, pb.SatInStartReplicationReq):
                    # The server restarted its inbound side: reconnect and resend from its lsn.
                    self._note("server re-requested inbound replication")
                    return
        except (websocket.WebSocketException, OSError) as exc:
            self._note(f"reader: {exc}")
        finally:
            gone.set()

    def _apply_stream_op(self, op, current: bytes | None) -> bytes | None:
        kind = op.WhichOneof("op")
        if kind == "begin":
            return op.begin.lsn
        if kind == "commit":
            self.stream_lsn = current
            self.stream_txs += 1
            return current
        body = getattr(op, kind)
        table, columns = self._relations[body.relation_id]
        data = body.old_row_data if kind == "delete" else body.row_data
        record = dict(zip(columns, (v.decode() for v in data), strict=False))
        key = (table, record["id"])
        with self._lock:
            if kind == "delete":
                self.view.pop(key, None)
            else:
                self.view[key] = tuple(record.get(c, "") for c in COLUMNS)
        return current

    def _session(self) -> None:
        ws = websocket.create_connection(self.url(), timeout=5)
        self.connects += 1
        gone = threading.Event()
        try:
            stored = self._handshake(ws)
            reader = threading.Thread(target=self._reader, args=(ws, gone), daemon=True)
            reader.start()
            sent = stored
            resend = [tx for tx in self.txs if tx.n > stored]
            self.resent += len(resend) if self.connects > 1 else 0
            while not gone.is_set() and not self.quit_event.is_set():
                backlog = [tx for tx in self.txs if tx.n > sent]
                if backlog and sent - self.acked < self.window:
                    ws.send_binary(self._encode(backlog[0]))
                    sent = backlog[0].n
                    continue
                if self.stop_event.is_set():  # no new writes; keep reading the stream
                    gone.wait(0.05)
                    continue
                if sent - self.acked < self.window:
                    self._new_tx()
                gone.wait(self.rng.uniform(*self.pause))
        except (websocket.WebSocketException, OSError) as exc:
            raise _Gone(f"send: {exc}") from None
        finally:
            try:
                ws.close(timeout=1)
            except Exception:  # noqa: BLE001
                pass
            gone.wait(5)

    def _note(self, text: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(text)

    def run(self) -> None:
        try:
            while not self.quit_event.is_set():
                try:
                    self._session()
                except (_Gone, websocket.WebSocketException, OSError) as exc:
                    self._note(f"session: {exc}")
                    self.quit_event.wait(0.3)
        except BaseException as exc:  # surfaced by the test
            self.failure = exc

    def finish(self, timeout: float) -> None:
        """Stop generating, wait until every transaction is acked (bounded). The client stays
        connected and keeps applying the outgoing stream until :meth:`quit`."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        while self.acked < len(self.txs) and time.monotonic() < deadline:
            if self.failure is not None:
                raise self.failure
            time.sleep(0.1)
        assert self.acked >= len(self.txs), (
            f"{self.client_id}: only {self.acked} of {len(self.txs)} transactions acked; "
            f"recent: {self.errors[-5:]}")

    def quit(self) -> None:
        self.quit_event.set()
        self.join(10)
        if self.failure is not None:
            raise self.failure

    def snapshot_view(self) -> dict[Key, Row]:
        with self._lock:
            return dict(self.view)


# -- processes -------------------------------------------------------------------------------


@dataclass
class StandaloneVaxine:
    """``python -m electric.vaxine.embedded`` as its own process (kill -9 / restart)."""

    data_dir: str
    api_port: int = field(default_factory=free_port)
    replication_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> StandaloneVaxine:
        os.makedirs(self.data_dir, exist_ok=True)
        log = open(os.path.join(self.data_dir, "..", "vaxine-standalone.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "electric.vaxine.embedded", "--data-dir", self.data_dir,
             "--api-port", str(self.api_port), "--replication-port", str(self.replication_port)],
            env={**os.environ, "PYTHONPATH": ROOT}, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        import socket

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"standalone vaxine exited with {self.proc.returncode}")
            for port in (self.api_port, self.replication_port):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                except OSError:
                    return False
            return True

        wait_until(up, timeout, "standalone vaxine listening", step=0.1)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def env(self) -> dict[str, str]:
        return {"VAXINE_HOST": "127.0.0.1", "VAXINE_API_PORT": str(self.api_port),
                "VAXINE_REPLICATION_PORT": str(self.replication_port)}


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in kB (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def read_tables(dsn: str) -> dict[Key, Row]:
    conn = psycopg2.connect(dsn + " connect_timeout=5")
    try:
        with conn.cursor() as cur:
            out: dict[Key, Row] = {}
            for table in TABLES:
                cur.execute(f"SELECT id::text, content, content_b FROM {table}")
                for row in cur.fetchall():
                    out[(table, row[0])] = tuple(row)
            return out
    finally:
        conn.close()


def diff(expected: dict[Key, Row], actual: dict[Key, Row], limit: int = 8) -> str:
    missing = [k for k in expected if k not in actual]
    extra = [k for k in actual if k not in expected]
    wrong = [k for k in expected if k in actual and actual[k] != expected[k]]
    lines = [f"{len(missing)} missing, {len(extra)} extra, {len(wrong)} different "
             f"(expected {len(expected)} rows, have {len(actual)})"]
    lines += [f"  missing {k}: {expected[k]}" for k in missing[:limit]]
    lines += [f"  extra {k}: {actual[k]}" for k in extra[:limit]]
    lines += [f"  wrong {k}: expected {expected[k]} got {actual[k]}" for k in wrong[:limit]]
    return "\n".join(lines)


def drain(q: queue.Queue) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out
