"""Satellite websocket endpoint: the thin gevent layer around :mod:`electric.satellite.session`.

One pywsgi handler greenlet per socket parses the HTTP upgrade request, then reads the
socket, feeds the bytes to its frame reader (:mod:`electric.satellite.websocket`, sans-I/O)
and the messages to the socket's
:class:`~electric.satellite.session.Session`; helper greenlets per socket run the 5 s liveness
timer, the outgoing Vaxine WAL stream (one stream connection per client, opened on the
client's start request) and the incoming writer (client transactions → one Vaxine
transaction each → fsync of the client's lsn in the offset file → ``SatPingResp{lsn}``).
All session calls for one socket happen under one lock, so the state machine sees one event
at a time and frames leave in the order it produced them.

Wiring (electric/app.py)::

    server = SatelliteServer(
        host, settings.websocket_port,
        auth=provider_from_settings(settings), cluster_id=settings.global_cluster_id,
        lookup_table=registry.table,                 # (schema, table) -> Table | None
        write_transaction=lambda tx: write_transaction(pool, tx, primary_keys),
        open_stream=lambda offset: wal_stream(host, port, offset),  # iterator of (tx, offset)
        offsets=offset_store,                        # get/put_satellite_lsn
    )
    server.start(); ...; server.stop()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import gevent
import gevent.lock
import gevent.queue
from gevent.event import Event
from gevent.pywsgi import WSGIHandler, WSGIServer
from loguru import logger

from electric import errors
from electric.changes import DeletedRecord, Transaction
from electric.http.server import LogWriter, QuietClientErrors
from electric.limits import DEFAULT, MIB, ByteBudget, SatelliteLimits
from electric.listeners import GuardedWSGIServer
from electric.retry import Backoff, Policy, retry
from electric.satellite import websocket
from electric.satellite.actions import (
    Action,
    AwaitTables,
    ClaimClient,
    Close,
    Send,
    StartOutgoing,
    StopOutgoing,
    WriteTransaction,
)
from electric.satellite.fanout import SharedTail, Subscription
from electric.satellite.lsn import StartOffset, describe
from electric.satellite.oplog_cache import OplogCache
from electric.satellite.session import HeldTransaction, Session
from electric.satellite.socket_writer import SocketWriter
from electric.satellite.websocket import (
    CloseReceived,
    FrameReader,
    Message,
    Ping,
    Pong,
    binary_frame,
    handshake,
)
from electric.sync_rules import effective_filter

WS_PATH = "/ws"
TABLE_RETRY_FIRST = 0.05  # re-looking up a table the registry does not know yet


class OffsetStore(Protocol):
    def get_satellite_lsn(self, client_id: str) -> bytes | None: ...

    def put_satellite_lsn(self, client_id: str, lsn: bytes) -> None: ...


class AuthProvider(Protocol):
    mode: str

    def validate(self, token: str) -> str: ...

    def authenticate(self, token: str) -> Any: ...


WriteFn = Callable[[Transaction], Any]
"""Commit one transaction to Vaxine as one Vaxine transaction; raise on failure."""
StreamFactory = Callable[[StartOffset], Iterator[tuple[Transaction, Any]]]
"""Open a WAL stream from ``"eof"``, ``0`` or ``(L, R)``; iterate ``(transaction, offset)``.
If the iterator has a ``close()`` method it is called when the stream is stopped."""


@dataclass
class _Write:
    generation: int
    transaction: Transaction


class _Outgoing:
    """One outgoing stream of a socket: the log iterator and, while it has work, the
    greenlet reading it."""

    __slots__ = ("iterator", "offset", "greenlet")

    def __init__(self, iterator: Iterator[tuple[Transaction, Any]] | None,
                 offset: StartOffset):
        self.iterator = iterator
        self.offset = offset
        self.greenlet: gevent.Greenlet | None = None

    def stop(self) -> None:
        greenlet, self.greenlet = self.greenlet, None
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill(block=False)
        close = getattr(self.iterator, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort while tearing down
                pass


class _Connection(SocketWriter):
    """Everything belonging to one websocket: the session, its lock and its greenlets
    (writing to the socket: :class:`~electric.satellite.socket_writer.SocketWriter`)."""

    def __init__(self, server: SatelliteServer, sock: Any, rfile: Any, peer: str) -> None:
        self.server = server
        self.rfile = rfile  # buffered: may hold frames sent right behind the handshake
        self.peer = peer
        self.frames = FrameReader(server.limits.max_message_bytes, server.inbound_budget)
        self.lock = gevent.lock.RLock()
        self.session = Session(
            authenticate=server.auth.authenticate,
            lookup_table=server.lookup_table,
            cluster_id=server.cluster_id,
            now=time.monotonic(),
            peer=peer,
            limits=server.limits,
            oplog_cache=server.oplog_cache,
            bind_filter=server.bind_filter if server.sync_rules is not None else None,
        )
        self.log = self.session.log
        self.client_id: str | None = None
        self.released = Event()
        # Per socket memory matters at 10,000 sockets: greenlets (a few KiB of saved stack
        # each) exist only while they have work. The writer starts with the first client
        # transaction, the sender only while the kernel buffer is full, and the outgoing
        # stream's greenlet only while catching up (a caught-up socket is written to by the
        # shared tail directly, see _direct).
        self.greenlets: list[gevent.Greenlet] = []
        self.streams: dict[int, _Outgoing] = {}
        self.writes: gevent.queue.Queue | None = None
        self.write_generation = 0
        self.writer: gevent.Greenlet | None = None
        self.closing = False
        self._init_writer(sock)

    # -- the handler greenlet --------------------------------------------------------------

    def run(self) -> None:
        self.log.info("client connected from {}", self.peer)
        try:
            self._read_loop()
        finally:
            self._teardown()

    def _read_loop(self) -> None:
        """Read what the frame reader asks for, feed it, act on its events. Once we have
        sent a close, the peer gets ``close_grace`` seconds to answer it."""
        reader = self.frames
        while True:
            for event in reader.events():
                if not self._on_frame_event(event):
                    return
            try:
                if self.closing:
                    data = None
                    with gevent.Timeout(self.server.limits.close_grace, False):
                        data = self.rfile.read1(reader.wanted())
                    if data is None:
                        return
                else:
                    # At most what completes the frame, and at most 1 MiB at a time: an
                    # idle socket waits in its small read buffer, a big payload (already
                    # reserved in the budget) is read in large pieces.
                    data = self.rfile.read1(min(reader.wanted(), MIB))
            except (OSError, ValueError):
                return
            if not data:
                return  # the peer closed the TCP connection
            reader.receive_data(data)

    def _on_frame_event(self, event: websocket.Event) -> bool:
        """False when the connection is done reading."""
        if isinstance(event, Message):
            if not self.closing:  # after our close, messages are no longer served
                receive = self.session.receive_text if event.text else self.session.receive
                self._handle(receive, event.data, time.monotonic())
            return True
        if isinstance(event, Ping):
            if not self.closing:
                self.queue_pong(event.payload)  # keeps frame order with our buffered sends
            return True
        if isinstance(event, Pong):
            return True
        if isinstance(event, CloseReceived):
            if not self.closing:  # the peer closes first: answer, then we are done
                self.closing = True
                self._write_frame(event.reply())
            return False
        self._close(event.code, event.reason, "WARNING")  # the peer broke the protocol
        return False

    # -- running the state machine --------------------------------------------------------

    def _handle(self, event: Callable[..., list[Action]], *args: Any) -> None:
        """Feed one event to the session and carry out its actions.

        Writes are queued after the lock is released so that a full writer queue (which
        blocks) never holds up the writer's own acknowledgements."""
        writes: list[WriteTransaction] = []
        with self.lock:
            actions = event(*args)
            for action in actions:
                if isinstance(action, WriteTransaction):
                    writes.append(action)
                else:
                    self._execute(action)
            generation = self.write_generation
        for write in writes:
            self._writer_queue().put(_Write(generation, write.transaction))

    def _writer_queue(self) -> gevent.queue.Queue:
        if self.writes is None:
            self.writes = gevent.queue.Queue(self.server.limits.writer_queue)
            self.writer = gevent.spawn(self._writer)
            self.greenlets.append(self.writer)
        return self.writes

    def _execute(self, action: Action) -> None:
        if isinstance(action, Send):
            self._send(action.data)
        elif isinstance(action, Close):
            self._close(action.code, action.reason)
        elif isinstance(action, ClaimClient):
            self._claim(action.client_id)
        elif isinstance(action, StartOutgoing):
            self._start_stream(action.subscription, action.offset)
        elif isinstance(action, StopOutgoing):
            self._stop_stream(action.subscription)

    # -- auth: claim the client id ----------------------------------------------------------

    def _claim(self, client_id: str) -> None:
        ok = self.server._claim(client_id, self)
        if not ok:
            self._run_actions(self.session.client_claim_failed())
            return
        self.client_id = client_id
        self.log = self.session.log
        try:
            stored = self.server.offsets.get_satellite_lsn(client_id)
        except Exception as exc:
            self.log.error("cannot read the stored lsn of {}: {}", client_id, exc)
            stored = None
        self._run_actions(self.session.client_claimed(stored))

    def _run_actions(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, WriteTransaction):
                self._writer_queue().put_nowait(_Write(self.write_generation,
                                                       action.transaction))
            else:
                self._execute(action)

    # -- outgoing: Vaxine WAL stream → client ---------------------------------------------

    def _start_stream(self, subscription: int, offset: StartOffset) -> None:
        out = _Outgoing(None, offset)
        self.streams[subscription] = out
        self._pump(subscription, out)

    def _open_stream(self, subscription: int, out: _Outgoing) -> Iterator:
        iterator = out.iterator = self.server.subscribe(out.offset)
        if isinstance(iterator, Subscription):
            # Caught up, the shared tail hands each transaction to _direct; this socket's
            # greenlet runs only to catch up, for big transactions and while held.
            iterator.sink = lambda item: self._direct(subscription, out, item)
            iterator.wake = lambda: self._pump(subscription, out)
        return iterator

    def _pump(self, subscription: int, out: _Outgoing) -> None:
        if out.greenlet is None and self.streams.get(subscription) is out:
            out.greenlet = gevent.spawn(self._stream, subscription, out)

    def _stop_stream(self, subscription: int) -> None:
        out = self.streams.pop(subscription, None)
        if out is not None:
            out.stop()

    def _direct(self, subscription: int, out: _Outgoing, item: tuple[Transaction, Any]) -> bool:
        """Called by the shared tail for each new transaction while this socket is caught
        up; must not block. Sends the shared frame (or the session's actions) now, or
        returns False to have the transaction queued for this socket's greenlet (a big
        transaction, a table the registry does not know yet, a busy session)."""
        if self.streams.get(subscription) is not out or self.closing:
            return True  # stopped: nothing more goes out on it
        tx, offset = item
        if self.lock.locked() or len(tx.changes) > self.server.limits.streamed_transaction:
            return False
        session = self.session
        shared = session.shared_oplog(subscription, tx, offset)
        self._direct_depth += 1
        try:
            if shared is not None:
                self._write_frame(self.server.oplog_cache.frame(shared, binary_frame))
                if self.out_bytes > self.server.limits.slow_client_bytes:
                    self._too_slow()
                return True
            with self.lock:
                actions = session.vaxine_transaction(subscription, tx, offset)
                if isinstance(actions, HeldTransaction):
                    return False  # waits for the registry: in this socket's greenlet
                for action in actions:
                    self._execute(action)
            return True
        finally:
            self._direct_depth -= 1

    def _stream(self, subscription: int, out: _Outgoing) -> None:
        offset = out.offset
        try:
            iterator = out.iterator or self._open_stream(subscription, out)
            for tx, tx_offset in iterator:
                if isinstance(offset, tuple) and isinstance(tx_offset, tuple | list):
                    if tuple(tx_offset) == offset:
                        continue  # the resume position itself was already delivered
                self._deliver(subscription, tx, tx_offset)
                if self.streams.get(subscription) is not out:
                    return
            if getattr(out.iterator, "handed_over", False):
                return  # caught up: the shared tail delivers from here (_direct)
            reason = "stream ended"
        except gevent.GreenletExit:
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            if out.greenlet is gevent.getcurrent():
                out.greenlet = None
        if self.streams.get(subscription) is out:
            del self.streams[subscription]
            out.stop()
            self._handle(self.session.outgoing_failed, subscription, reason)

    def _deliver(self, subscription: int, tx: Transaction, offset: Any) -> None:
        """Carry out the session's actions for one outgoing transaction; where it waits for
        the schema registry (AwaitTables), wait outside the lock with a capped back-off and
        go on with the same actions."""
        backoff: Backoff | None = None
        with self.lock:
            actions = iter(self.session.vaxine_transaction(subscription, tx, offset))
        while True:
            with self.lock:
                for action in actions:
                    if isinstance(action, AwaitTables):
                        self.session.tables_awaited(time.monotonic())
                        break
                    self._execute(action)
                else:
                    return
            if backoff is None:
                backoff = Backoff(Policy(TABLE_RETRY_FIRST, self.server.limits.table_retry_max))
            gevent.sleep(backoff.next())

    # -- incoming: client transactions → Vaxine → offset file → ack -----------------------

    def _writer(self) -> None:
        while True:
            item: _Write = self.writes.get()
            if item.generation != self.write_generation:
                continue  # queued before a writer failure: the client will re-send it
            tx = item.transaction
            missing = self._wait_for_tables(tx)
            if missing:
                self._handle(
                    self.session.transaction_rejected, tx.lsn, f"table {missing} is not replicated"
                )
                return
            try:
                allowed = self._stored_rows_allow(tx)
            except gevent.GreenletExit:
                raise
            except Exception as exc:  # the store cannot be read: as a failed write
                self._writer_failed(tx, exc)
                continue
            if not allowed:
                return
            try:
                self._write_with_retry(tx)
            except gevent.GreenletExit:
                raise
            except Exception as exc:
                if self.server.is_permanent(exc):
                    self._handle(self.session.transaction_rejected, tx.lsn, str(exc))
                    return
                self._writer_failed(tx, exc)
                continue
            try:
                self.server.offsets.put_satellite_lsn(self.client_id, tx.lsn)
            except Exception as exc:
                # The offset file refuses writes (disk full, I/O failure): acking would
                # promise durability we do not have. Drop this client; it will re-send.
                self.log.error("cannot persist lsn of {!r}: {}", self.client_id, exc)
                self._handle(self.session.transaction_rejected, tx.lsn, "offset storage failed")
                return
            self.log.debug("Saving lsn {} for satellite: {!r}", describe(tx.lsn), self.client_id)
            self._handle(self.session.transaction_written, tx.lsn)

    def _stored_rows_allow(self, tx: Transaction) -> bool:
        """Sync rules: judge the client's updates and deletes on the rows as stored (the
        store's lookup; without one, on the old rows the client sent). This writer is the
        client's only one, so its earlier transactions are already stored."""
        lookup = self.server.current_rows
        changes = self.session.rows_to_verify(tx) if lookup is not None else []
        if not changes:
            return True
        stored = lookup([(c.relation, c.old_record if isinstance(c, DeletedRecord)
                          else (c.old_record or c.record)) for c in changes])
        with self.lock:
            refusal = self.session.verify_stored_rows(tx, changes, stored)
            for action in refusal or ():
                self._execute(action)
        return refusal is None

    def _wait_for_tables(self, tx: Transaction) -> str | None:
        """Give the schema registry ``table_wait`` seconds to learn the tables ``tx`` uses
        (connectors describe them at start-up); returns the first still unknown one."""
        deadline = time.monotonic() + self.server.limits.table_wait
        for relation in {change.relation for change in tx.changes}:
            while self.server.lookup_table(relation) is None:
                if time.monotonic() >= deadline:
                    return f"{relation[0]}.{relation[1]}"
                gevent.sleep(0.05)
        return None

    def _write_with_retry(self, tx: Transaction) -> None:
        if not tx.changes:
            return  # empty transactions are acked, nothing to store

        def failed(exc: BaseException, _attempt: int, delay: float) -> None:
            self.log.warning(
                "writing transaction {} to Vaxine failed ({}: {}), retrying in {:.0f} ms",
                describe(tx.lsn), type(exc).__name__, exc, delay * 1000,
            )

        retry(lambda: self.server.write_transaction(tx),
              Policy(self.server.limits.write_retry_first, self.server.limits.write_retry_max_sleep,
                     jitter=0.2, total=self.server.limits.write_retry_total),
              give_up=self.server.is_permanent, on_retry=failed)

    def _writer_failed(self, tx: Transaction, exc: Exception) -> None:
        self.log.error(
            "giving up on transaction {} from {!r}: {}: {}",
            describe(tx.lsn),
            self.client_id,
            type(exc).__name__,
            exc,
        )
        with self.lock:
            self.write_generation += 1
            self._run_actions(self.session.writer_failed(f"{type(exc).__name__}: {exc}"))
            while not self.writes.empty():
                self.writes.get_nowait()
            try:
                stored = self.server.offsets.get_satellite_lsn(self.client_id)
            except Exception:
                stored = None
            self._run_actions(self.session.writer_restarted(stored))

    # -- liveness -------------------------------------------------------------------------

    def tick(self) -> None:
        """Liveness check, run for every socket by the server's single ticker greenlet
        (one timer for all sockets instead of a greenlet each)."""
        if self.closing or self.lock.locked():
            return  # a socket busy sending is not silent; look again next round
        self._handle(self.session.tick, time.monotonic())

    # -- teardown -------------------------------------------------------------------------

    def _teardown(self) -> None:
        with self.lock:
            self.closing = True
            for action in self.session.connection_lost():
                if isinstance(action, StopOutgoing):
                    self._stop_stream(action.subscription)
        for out in list(self.streams.values()):
            out.stop()
        self.streams.clear()
        current = gevent.getcurrent()
        greenlets = [*self.greenlets, *([self.sender] if self.sender is not None else [])]
        gevent.killall([g for g in greenlets if g is not current], block=False)
        if self.client_id is not None:
            self.server._release(self.client_id, self)
        self.frames.release()
        self.released.set()
        self.log.info("client disconnected")


def _held_status(conn: _Connection) -> dict[str, Any]:
    held = conn.session.held_at()
    assert held is not None and held.since is not None
    since = time.time() - (time.monotonic() - held.since)  # wall clock for operators
    return {"client": conn.client_id, "offset": held.offset, "tables": held.tables,
            "since": since}


class _Handler(QuietClientErrors, WSGIHandler):
    """pywsgi parses the HTTP request (clean 400s for malformed ones); the websocket
    handshake is decided by :func:`electric.satellite.websocket.handshake`. After a 101 the
    socket belongs to a :class:`_Connection`; ``application`` is
    :meth:`SatelliteServer._serve`, not a WSGI application."""

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        if rfile is None:  # a small read buffer: 10,000 idle sockets each hold one
            rfile = sock.makefile("rb", server.read_buffer)
        super().__init__(sock, address, server, rfile)

    def run_application(self) -> None:
        env = self.environ
        headers = {k[5:].replace("_", "-").lower(): v for k, v in env.items()
                   if k.startswith("HTTP_")}
        reply = handshake(env.get("REQUEST_METHOD", ""), env.get("PATH_INFO", ""),
                          self.request_version or "", headers, WS_PATH)
        self.start_response(reply.status, reply.headers)
        if not reply.accepted:
            self.result = [reply.body]
            self.process_result()
            return
        self.write(b"")  # the 101 head, nothing after it
        self.close_connection = True
        self.application(env, self.socket, self.rfile)


class SatelliteServer:
    """The websocket listener. Plain values and injected collaborators only, so it can be
    run in tests against fakes or wired to the real Vaxine pool/stream and offset file."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        auth: AuthProvider,
        cluster_id: str,
        lookup_table: Callable[[tuple[str, str]], Any],
        write_transaction: WriteFn,
        open_stream: StreamFactory,
        offsets: OffsetStore,
        limits: SatelliteLimits = DEFAULT.satellite,
        is_permanent: Callable[[BaseException], bool] | None = None,
        shared_tail: bool = True,
        tls: Any = None,
        max_connections: int = 10_000,
        sync_rules: Callable[[], Any] | None = None,
        current_rows: Callable[[list], list] | None = None,
    ) -> None:
        self.host = host
        self.tls = tls  # a server SSLContext: wss:// instead of ws://
        self.max_connections = max_connections
        self.port = port
        self.auth = auth
        self.cluster_id = cluster_id
        self.lookup_table = lookup_table
        self.write_transaction = write_transaction
        self.open_stream = open_stream
        self.offsets = offsets
        self.limits = limits
        self.ping_interval = limits.ping_interval
        self.slow_disconnects = 0
        self.oplog_cache = OplogCache(limits)
        # All sockets of this server together may hold at most this much of messages
        # still being received.
        self.inbound_budget = ByteBudget(limits.inbound_budget_bytes, "websocket")
        # SYNC_RULES_FILE: returns the checked RuleSet (waiting for the check) or raises
        # FilterUnavailable; None without the setting (no filter, today's path).
        self.sync_rules = sync_rules
        # The store's rows by key (LocalStore.current_rows): what client writes are judged
        # on under sync rules; None (Vaxine) judges on the old rows clients send.
        self.current_rows = current_rows
        # Sockets following the live log share one WAL stream (see fanout.py); catch-up
        # from an older offset still uses a private stream per socket.
        self.tail = SharedTail(open_stream, limits) if shared_tail else None
        # Errors that retrying cannot fix (bad input rather than an unavailable Vaxine).
        self.is_permanent = is_permanent or errors.is_permanent
        self._clients: dict[str, _Connection] = {}
        self._connections: set[_Connection] = set()
        self._to_flush: list[_Connection] = []
        self._flush_scheduled = False
        self._server: WSGIServer | None = None
        self._ticker: gevent.Greenlet | None = None
        self.log = logger.bind(origin="satellite")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start accepting (raises OSError if the port is taken)."""
        # Over the cap a socket is answered 503 before any upgrade (GuardedWSGIServer).
        server = GuardedWSGIServer(
            (self.host, self.port),
            self._serve,
            handler_class=_Handler,
            log=None,
            error_log=LogWriter("satellite", "WARNING"),
            max_connections=self.max_connections,
            name="satellite",
            **({"ssl_context": self.tls} if self.tls is not None else {}),
        )
        server.read_buffer = self.limits.read_buffer  # for _Handler
        server.start()
        self._server = server
        self._ticker = gevent.spawn(self._tick_all)
        self.port = server.server_port
        self.log.info(
            "Satellite websocket server listening on port {} (path {}, {})", self.port, WS_PATH,
            "wss" if self.tls is not None else "ws"
        )

    def _tick_all(self) -> None:
        while True:
            gevent.sleep(self.ping_interval)
            for conn in list(self._connections):
                try:
                    conn.tick()
                except Exception:
                    conn.log.exception("liveness check failed")

    def stop(self, timeout: float = 2.0) -> None:
        if self._server is None:
            return
        if self._ticker is not None:
            self._ticker.kill(block=False)
        if self.tail is not None:
            self.tail.close()
        self._server.close()  # stop accepting
        for conn in list(self._connections):
            # A socket stuck behind a full send buffer holds its lock: cut it instead of
            # waiting for it during shutdown.
            if conn.lock.acquire(timeout=0.2):
                try:
                    conn._close(1001, "server shutting down")
                finally:
                    conn.lock.release()
            else:
                conn._cut()
        deadline = time.monotonic() + timeout
        for conn in list(self._connections):
            conn.released.wait(max(0.0, deadline - time.monotonic()))
        self._server.stop(timeout=0.5)
        self._server = None

    def listener_status(self) -> dict[str, Any]:
        if self._server is None:
            return {"tls": self.tls is not None, "open_connections": 0,
                    "max_connections": self.max_connections, "refused_connections": 0}
        return self._server.listener_status()

    def _flush_later(self, conn: _Connection) -> None:
        self._to_flush.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            gevent.get_hub().loop.run_callback(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_scheduled = False
        conns, self._to_flush = self._to_flush, []
        for conn in conns:
            try:
                conn._flush()
            except Exception:  # one socket's failure must not cost the others theirs
                conn.log.exception("writing to the socket failed")
                conn._fail_sending()

    def bind_filter(self, claims: Any) -> Any:
        """A client's effective filter, the one object shared by every client with an equal
        one (so they share encodings, see oplog_cache)."""
        assert self.sync_rules is not None
        return self.oplog_cache.intern(effective_filter(self.sync_rules(), claims))

    def subscribe(self, offset: StartOffset) -> Iterator[tuple[Transaction, Any]]:
        """The outgoing stream for one socket: via the shared tail, or a private stream."""
        if self.tail is not None:
            return self.tail.subscribe(offset)
        return self.open_stream(offset)

    def status(self, max_clients: int | None = None) -> dict[str, Any]:
        """Operator view: counts, the shared tail, and up to ``max_clients`` sessions."""
        connections = list(self._connections)
        if max_clients is None:
            max_clients = self.limits.status_max_clients
        return {
            "port": self.port,
            "clients_connected": len(self._clients),
            "sockets_open": len(connections),
            "shared_tail": self.tail.status() if self.tail is not None else None,
            "oplog_cache": self.oplog_cache.status(),
            "slow_disconnects": self.slow_disconnects,
            "clients": [c.session.status() for c in connections[:max_clients]],
            "streams_held": [_held_status(c) for c in connections
                             if c.session.held_at() is not None],
            "clients_truncated": len(connections) > max_clients,
        }

    # -- the WSGI application -------------------------------------------------------------

    def _serve(self, environ: dict, sock: Any, rfile: Any) -> None:
        """One upgraded socket, until it closes (run by its pywsgi handler greenlet)."""
        peer = f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '?')}"
        conn = _Connection(self, sock, rfile, peer)
        self._connections.add(conn)
        try:
            conn.run()
        except Exception:
            conn.log.exception("websocket handler failed")
        finally:
            self._connections.discard(conn)

    # -- client id registry (node-local) ---------------------------------------------------

    def _claim(self, client_id: str, conn: _Connection) -> bool:
        deadline = time.monotonic() + self.limits.claim_grace
        while True:
            holder = self._clients.get(client_id)
            if holder is None or holder is conn:
                self._clients[client_id] = conn
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            holder.released.wait(remaining)

    def _release(self, client_id: str, conn: _Connection) -> None:
        if self._clients.get(client_id) is conn:
            del self._clients[client_id]
