"""Satellite websocket listener: the gevent shell that accepts sockets and holds what they
share.

pywsgi parses each HTTP request (malformed ones get a 400, see ``QuietClientErrors``; over
the connection cap a 503, see ``GuardedWSGIServer``); the answer, and whether the socket
becomes a websocket, is :func:`electric.satellite.websocket.handshake`'s. An upgraded socket
is served by a :class:`~electric.satellite.connection.Connection` in its handler greenlet.
The server holds what all sockets share: the node-local client id registry, one ticker
greenlet for every socket's liveness timer, the shared WAL tail (``fanout.py``), the shared
encodings (``oplog_cache.py``), the inbound memory budget, and the operator status.

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
from typing import Any, Protocol

import gevent
import gevent.lock
import gevent.queue
from gevent.pywsgi import WSGIHandler, WSGIServer
from loguru import logger

from electric import errors
from electric.changes import Transaction
from electric.http.server import LogWriter, QuietClientErrors
from electric.limits import DEFAULT, ByteBudget, SatelliteLimits
from electric.listeners import GuardedWSGIServer
from electric.satellite.connection import Connection
from electric.satellite.fanout import SharedTail
from electric.satellite.lsn import StartOffset
from electric.satellite.oplog_cache import OplogCache
from electric.satellite.websocket import handshake
from electric.sync_rules import effective_filter

WS_PATH = "/ws"


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


def _held_status(conn: Connection) -> dict[str, Any]:
    held = conn.session.held_at()
    assert held is not None and held.since is not None
    since = time.time() - (time.monotonic() - held.since)  # wall clock for operators
    return {"client": conn.client_id, "offset": held.offset, "tables": held.tables,
            "since": since}


class _Handler(QuietClientErrors, WSGIHandler):
    """pywsgi parses the HTTP request (clean 400s for malformed ones); the websocket
    handshake is decided by :func:`electric.satellite.websocket.handshake`. After a 101 the
    socket belongs to a :class:`Connection`; ``application`` is
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
        self._clients: dict[str, Connection] = {}
        self._connections: set[Connection] = set()
        self._to_flush: list[Connection] = []
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

    def _flush_later(self, conn: Connection) -> None:
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
        conn = Connection(self, sock, rfile, peer)
        self._connections.add(conn)
        try:
            conn.run()
        except Exception:
            conn.log.exception("websocket handler failed")
        finally:
            self._connections.discard(conn)

    # -- client id registry (node-local) ---------------------------------------------------

    def _claim(self, client_id: str, conn: Connection) -> bool:
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

    def _release(self, client_id: str, conn: Connection) -> None:
        if self._clients.get(client_id) is conn:
            del self._clients[client_id]
