"""Test harness: the Satellite websocket server on its own gevent hub, and a Python client.

pytest itself is not monkey-patched, so the server runs in a background OS thread (which has
its own gevent hub) and the tests talk to it over real sockets with the blocking
``websocket-client`` library, exactly like an outside client would.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import websocket

from electric.changes import Column, Table, Transaction
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.satellite.auth import InsecureAuth

TABLE = Table(
    schema="public",
    name="entries",
    oid=20000,
    columns=(Column("id", "uuid"), Column("content", "varchar"), Column("content_b", "text")),
    primary_keys=("id",),
)


class FakeStream:
    """A WAL stream fed from the test thread: ``push(tx, offset)``. Every opened stream sees
    all pushed events from its start offset: ``"eof"`` → only later pushes, ``0`` → all,
    ``(L, R)`` → events after the one at that offset (and that one, the server must drop)."""

    def __init__(self) -> None:
        self.events: list[tuple[Transaction, Any]] = []
        self.lock = threading.Lock()
        self.opened: list[Any] = []
        self.positions: list[int] = []  # where each opened stream starts in ``events``
        self.closed = 0
        self.fail_next: Exception | None = None

    def push(self, tx: Transaction, offset: Any) -> None:
        with self.lock:
            self.events.append((tx, offset))

    def open(self, start):
        import gevent

        self.opened.append(start)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        with self.lock:
            if start == "eof":
                pos = len(self.events)
            elif start == 0:
                pos = 0
            else:
                pos = next(
                    (i for i, (_, off) in enumerate(self.events) if off == start), len(self.events)
                )
            self.positions.append(pos)

        def gen():
            nonlocal pos
            try:
                while True:
                    with self.lock:
                        batch = self.events[pos:]
                    pos += len(batch)
                    yield from batch
                    if not batch:
                        gevent.sleep(0.005)
            finally:
                self.closed += 1

        return gen()


class FakeWriter:
    def __init__(self) -> None:
        self.written: list[Transaction] = []
        self.fail_times = 0
        self.calls = 0

    def __call__(self, tx: Transaction) -> None:
        self.calls += 1
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("vaxine unavailable (fake)")
        self.written.append(tx)


def server_options(kwargs: dict) -> dict:
    """``SatelliteServer`` keyword arguments from a test's ``server_kwargs``: names of
    :class:`~electric.limits.SatelliteLimits` fields go into its ``limits`` (with a short
    ``table_wait``), the rest are passed as they are."""
    from dataclasses import fields, replace

    from electric.limits import DEFAULT

    names = {f.name for f in fields(DEFAULT.satellite)}
    limits = {"table_wait": 0.3, **{k: v for k, v in kwargs.items() if k in names}}
    return {"limits": replace(DEFAULT.satellite, **limits),
            **{k: v for k, v in kwargs.items() if k not in names}}


@dataclass
class ServerThread:
    """Runs SatelliteServer in a thread; ``stop()`` shuts it down."""

    offsets_path: str
    auth: Any = field(default_factory=InsecureAuth)
    cluster_id: str = "electric-development-cluster-0000"
    tables: dict = field(default_factory=lambda: {TABLE.relation: TABLE})
    writer: Any = field(default_factory=FakeWriter)
    stream: FakeStream = field(default_factory=FakeStream)
    server_kwargs: dict = field(default_factory=dict)
    write_fn: Any = None
    open_stream: Any = None
    lookup_table: Any = None
    # Run inside the server thread (gevent objects such as pools must live on its hub):
    # ``setup(self)`` before the server is built (may set write_fn / open_stream),
    # ``teardown(self)`` after it stopped.
    setup: Any = None
    teardown: Any = None

    def start(self) -> ServerThread:
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="satellite-server")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server thread did not start")
        if self._error:
            raise self._error
        return self

    def _run(self) -> None:
        import gevent

        from electric.offsets.store import OffsetStore
        from electric.satellite.server import SatelliteServer

        self._calls: queue.Queue = queue.Queue()
        try:
            if self.setup is not None:
                self.setup(self)
            self.offsets = OffsetStore(self.offsets_path)
            self.server = SatelliteServer(
                "127.0.0.1",
                0,
                auth=self.auth,
                cluster_id=self.cluster_id,
                lookup_table=self.lookup_table or self.tables.get,
                write_transaction=self.write_fn or self.writer,
                open_stream=self.open_stream or self.stream.open,
                offsets=self.offsets,
                **server_options(self.server_kwargs),
            )
            self.server.start()
            self.port = self.server.port
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            try:
                fn, result = self._calls.get_nowait()
            except queue.Empty:
                gevent.sleep(0.01)
                continue
            try:
                result.put((True, fn()))
            except BaseException as exc:
                result.put((False, exc))
        self.server.stop(timeout=0.3)
        self.offsets.close()
        if self.teardown is not None:
            self.teardown(self)

    def call(self, fn, timeout: float = 10.0):
        """Run ``fn()`` on the server's hub (e.g. a Vaxine read through its pool)."""
        result: queue.Queue = queue.Queue()
        self._calls.put((fn, result))
        ok, value = result.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def status(self) -> dict:
        return self.server.status()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with {code}")
        self.code = code


class SatClient:
    """A small Satellite client: send protobuf messages, receive decoded ones."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.close_code: int | None | str = "open"
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()

    def send(self, msg) -> None:
        self.ws.send_binary(frames.encode(msg))

    def send_raw(self, data: bytes) -> None:
        self.ws.send_binary(data)

    def recv_frame(self, timeout: float = 5.0) -> bytes:
        """Next binary payload; raises Closed when the server closed the socket."""
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return data
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                raise Closed(self.close_code)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                raise AssertionError(f"server sent a text frame: {data!r}")
            # ping/pong: keep reading

    def recv(self, timeout: float = 5.0):
        return frames.decode(self.recv_frame(timeout))

    def recv_until(self, kind, timeout: float = 5.0, skip_pings: bool = True):
        """Receive messages until one of type ``kind``; returns (message, skipped list)."""
        skipped = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(msg, kind):
                return msg, skipped
            if skip_pings and isinstance(msg, pb.SatPingReq):
                self.send(frames.ping_resp(None))
                continue
            skipped.append(msg)

    def expect_closed(self, timeout: float = 5.0) -> list:
        """Read until the close frame; returns the messages that came before it."""
        seen = []
        try:
            while True:
                seen.append(self.recv(timeout))
        except Closed:
            return seen
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            self.close_code = "eof"
            return seen

    def expect_error_close(self, code: int, timeout: float = 5.0) -> None:
        seen = self.expect_closed(timeout)
        assert seen and seen[-1] == frames.error(code), seen
        assert self.close_code is None, self.close_code

    def assert_silent(self, seconds: float) -> None:
        try:
            msg = self.recv(seconds)
        except (TimeoutError, websocket.WebSocketTimeoutException):
            return
        raise AssertionError(f"unexpected message {msg}")

    def auth(self, client_id: str = "device-id-0000", token: str = "user-1", answer_start=True):
        """Authenticate; returns the server's start request (answered unless told not to)."""
        self.send(pb.SatAuthReq(id=client_id, token=token))
        resp = self.recv()
        assert isinstance(resp, pb.SatAuthResp), resp
        start = self.recv()
        assert isinstance(start, pb.SatInStartReplicationReq), start
        if answer_start:
            self.send(pb.SatInStartReplicationResp())
        return start

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def oplog(lsn: bytes, *ops, ts: int = 1666371243516, begin=True, commit=True) -> pb.SatOpLog:
    out = []
    if begin:
        out.append(pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=lsn)))
    out += list(ops)
    if commit:
        out.append(pb.SatTransOp(commit=pb.SatOpCommit()))
    return pb.SatOpLog(ops=out)


def insert(rel: int, *values: bytes) -> pb.SatTransOp:
    return pb.SatTransOp(insert=pb.SatOpInsert(relation_id=rel, row_data=list(values)))


def update(rel: int, values, old=()) -> pb.SatTransOp:
    return pb.SatTransOp(
        update=pb.SatOpUpdate(relation_id=rel, row_data=list(values), old_row_data=list(old))
    )


def delete(rel: int, *old: bytes) -> pb.SatTransOp:
    return pb.SatTransOp(delete=pb.SatOpDelete(relation_id=rel, old_row_data=list(old)))


def relation(rel_id: int, table: Table = TABLE) -> pb.SatRelation:
    return pb.SatRelation(
        schema_name=table.schema,
        table_name=table.name,
        relation_id=rel_id,
        columns=[pb.SatRelationColumn(name=c.name, type=c.type_name) for c in table.columns],
    )
