"""Electric as a logical-replication publisher on ``POSTGRES_REPLICATION_PORT`` (5433).

Each connected Postgres has a subscription pointing here; its apply worker connects, asks
for ``START_REPLICATION SLOT "<subscription>" LOGICAL <lsn>`` and receives the merged log of
every writer as pgoutput (the encoding and numbering live in ``slot.py``, the upsert contract
in ``upsert.py``). This module is the I/O shell; it decides nothing about the protocol:

* a ``StreamServer``; one greenlet per connection, reading into the sans-I/O
  :class:`~electric.postgres.publisher_session.PublisherSession` and performing the actions
  it returns (send, TLS handshake, close, start/stop streaming) and answering its questions
  from the registry and the offset store (docs/protocols.md §2 has the rules it applies:
  SCRAM first, admission, the reply to every command, one FATAL before closing on bad input);
* timeouts per phase (startup, idle between queries, silent while streaming), and at most
  ``max_connections`` open connections (one more gets FATAL 53300 and is closed);
* per slot at most one streaming session (``publisher_stream.py``). A new
  ``START_REPLICATION`` for a slot takes the slot over (the old socket is closed): the
  subscriber only reconnects when its previous worker is gone, so the old socket is a
  half-dead leftover;
* a slot can be *held* (:meth:`Publisher.hold`): the subscriber may connect and gets
  keepalives, but no data until :meth:`Publisher.release`. Subscription setup holds the slot
  until ``REFRESH PUBLICATION`` has marked the tables ready, because a stock subscriber drops
  changes for tables it does not know yet and never asks for them again (the setup window of
  docs/protocols.md §2.6). Slots start held when ``hold_until_released`` is set.

Status (per slot): streaming or not, sent and confirmed (flushed) positions, how many sent
transactions the subscriber has not confirmed yet and for how long (``lag_seconds``).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from gevent.event import Event
from gevent.server import StreamServer
from loguru import logger

from electric.changes import RelationName, Table, Transaction
from electric.limits import DEFAULT, PostgresLimits
from electric.postgres import publisher_session as ps
from electric.postgres import replies, wire
from electric.postgres.lsn import Lsn
from electric.postgres.publisher_progress import SlotState, check_apply_loop
from electric.postgres.publisher_session import PublisherSession, system_identifier
from electric.postgres.publisher_stream import Closed, Connection, StreamSession
from electric.postgres.scram import ScramVerifier
from electric.postgres.shared_encode import SharedEncodings
from electric.schema import SchemaRegistry

__all__ = ["Publisher", "OpenStream", "vaxine_stream_opener"]

OpenStream = Callable[[bytes | None], Iterable[tuple[Transaction, bytes]]]
"""``open_stream(after_offset)``: the log from just after ``after_offset`` (``None`` = from the
start), as ``(Transaction, offset)`` in log order. It may block; it is read in its own greenlet."""


_log = logger.bind(origin="publisher")
_conn_ids = itertools.count(1)


class Publisher:
    """The port-5433 server. ``start()`` binds and serves; ``stop()`` closes everything.

    ``registry`` answers admission (``is_ready(application_name)``) and table lookups,
    ``offsets`` stores the per-transaction LSN mappings, ``open_stream`` reads the log.
    ``password`` is what subscribers must prove (SCRAM-SHA-256); there is no way to run
    without one. ``tls`` (a server SSLContext) turns TLS on and makes it required.
    ``port=0`` binds a free port (see :attr:`port` after ``start()``).
    """

    def __init__(
        self,
        *,
        registry: SchemaRegistry,
        offsets: Any,
        open_stream: OpenStream,
        host: str = "0.0.0.0",
        port: int = 5433,
        system_id: str = "electric",
        hold_until_released: bool = True,
        server_version: str = replies.DEFAULT_SERVER_VERSION,
        table_lookup: Callable[[str, RelationName], Table | None] | None = None,
        open_snapshot: Callable[[list[RelationName]], Transaction] | None = None,
        password: str,
        tls: Any = None,
        max_connections: int | None = None,
        limits: PostgresLimits = DEFAULT.postgres,
    ) -> None:
        self.registry = registry
        # ``open_snapshot(relations)``: the log's current rows of those tables as one
        # transaction (for backfills); ``None`` when the log cannot give it.
        self.open_snapshot = open_snapshot
        self.verifier = ScramVerifier.from_password(password)
        self.tls = tls
        self.limits = limits
        # MAX_CONNECTIONS (a setting) overrides the default of the limits table.
        self.max_connections = (limits.publisher_max_connections if max_connections is None
                                else max_connections)
        self.refused_connections = 0
        self.failed_authentications = 0
        self.offsets = offsets
        self.open_stream = open_stream
        self.host = host
        self._port = port
        self.system_id = system_id
        self.hold_until_released = hold_until_released
        self.server_version = server_version
        # (slot, relation) -> the table as that subscriber's Postgres has it (e.g. its
        # connector's own view after a migration); falls back to the global registry.
        self.table_lookup = table_lookup
        self._slots: dict[str, SlotState] = {}
        # Row messages of log transactions, encoded once for every subscriber session.
        self.encodings = SharedEncodings(limits)
        self._conns: set[Connection] = set()
        self._server: StreamServer | None = None
        self._sysid = system_identifier(system_id)

    # -- public API -------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is not None and self._server.server_port:
            return self._server.server_port
        return self._port

    def start(self) -> None:
        """Bind and start accepting. Raises ``OSError`` when the port cannot be bound."""
        self._server = StreamServer((self.host, self._port), self._handle)
        self._server.start()
        _log.info("replication publisher listening on port {}", self.port)

    def stop(self) -> None:
        """Stop accepting, end every session and close every connection."""
        if self._server is not None:
            self._server.close()
        for state in self._slots.values():
            if state.session is not None:
                state.session.stop()
        for conn in list(self._conns):
            conn.close()
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None

    def hold(self, slot: str) -> None:
        """Stop sending data on ``slot`` (keepalives continue) until :meth:`release`."""
        self._slot(slot).released.clear()

    def release(self, slot: str) -> None:
        """Allow data on ``slot`` (the subscriber's tables are ready)."""
        self._slot(slot).released.set()

    def backfill(self, slot: str, relations: list[RelationName]) -> None:
        """Send ``slot``'s subscriber every current row of ``relations`` at the start of its
        next session (then :meth:`reset` it): it gained these tables after the log went past
        rows of theirs that it therefore never received."""
        if self.open_snapshot is not None:
            self._slot(slot).backfill.update(relations)

    def reset(self, slot: str) -> bool:
        """End ``slot``'s streaming session, if any; the subscriber reconnects by itself and
        resumes exactly, with fresh table descriptions (call after migrating its Postgres).
        Returns True when a session was ended."""
        state = self._slots.get(slot)
        if state is None or state.session is None:
            return False
        logger.bind(origin=slot).info("ending the streaming session of {} (reset)", slot)
        state.session.stop()
        return True

    def listener_status(self) -> dict[str, Any]:
        """The port itself: TLS or not, open connections, refusals (cap, password)."""
        return {"tls": self.tls is not None, "open_connections": len(self._conns),
                "max_connections": self.max_connections,
                "refused_connections": self.refused_connections,
                "failed_authentications": self.failed_authentications}

    def is_streaming(self, slot: str) -> bool:
        state = self._slots.get(slot)
        return state is not None and state.session is not None

    def status(self) -> dict[str, dict[str, Any]]:
        """Per slot: ``streaming``, ``held``, ``sent_lsn``, ``flushed_lsn``,
        ``pending_transactions`` (sent, not confirmed), ``lag_seconds`` (age of the oldest of
        those), ``sent_transactions``, ``sessions``, ``resume`` (how the last session found its
        start: new/exact/older/collected/unknown) and, while streaming, the client address."""
        out: dict[str, dict[str, Any]] = {}
        for name, state in self._slots.items():
            entry: dict[str, Any] = {
                "streaming": state.session is not None,
                "held": not state.released.is_set(),
                "sent_lsn": str(Lsn(state.sent_lsn)),
                "flushed_lsn": str(Lsn(state.flushed_lsn)),
                "sent_transactions": state.sent_transactions,
                "sessions": state.sessions,
                "resume": state.last_reason,
                "apply_failures": state.apply_failures,
                "failing_lsn": None if state.failing_lsn is None else str(Lsn(state.failing_lsn)),
                "pending_transactions": 0,
                "lag_seconds": 0.0,
            }
            if state.session is not None:
                entry.update(state.session.status())
            out[name] = entry
        return out

    # -- internals --------------------------------------------------------------------

    def _slot(self, name: str) -> SlotState:
        state = self._slots.get(name)
        if state is None:
            released = Event()
            if not self.hold_until_released:
                released.set()
            state = self._slots[name] = SlotState(name, released)
        return state


    def _handle(self, sock: socket.socket, address: Any) -> None:
        if len(self._conns) >= self.max_connections:
            self._refuse(sock, address)
            return
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        conn = Connection(sock, peer)
        proto = PublisherSession(
            verifier=self.verifier, peer=peer, tls_offered=self.tls is not None,
            server_version=self.server_version, sysid=self._sysid,
            pid=(os.getpid() << 12 | next(_conn_ids)) & 0x7FFFFFFF,
            secret=int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF,
            limits=self.limits,
        )
        self._conns.add(conn)
        try:
            self._serve(conn, proto)
        except Closed:
            pass
        except Exception:  # a bug must cost one connection, never the server
            _log.exception("connection from {} failed unexpectedly", conn.peer)
        finally:
            self._conns.discard(conn)
            if conn.session is not None:
                self._subscriber_left(conn, "connection closed")
                conn.session.stop()
            conn.close()

    def _refuse(self, sock: socket.socket, address: Any) -> None:
        """Over the cap: FATAL 53300 in the clear, as Postgres does. libpq reads an error
        in place of the answer to its SSLRequest too. The peer gets a moment to read it
        (closing with its startup packet unread would reset the connection instead)."""
        self.refused_connections += 1
        _log.warning("refused a connection from {}: {} connections open (MAX_CONNECTIONS)",
                     address[0] if isinstance(address, tuple) else address, len(self._conns))
        try:
            sock.sendall(replies.error_response("FATAL", "53300", "sorry, too many clients already"))
            sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(self.limits.publisher_refusal_linger, False):
                while sock.recv(self.limits.publisher_recv_size):
                    pass
        except OSError:
            pass
        finally:
            sock.close()

    def _start_tls(self, conn: Connection, proto: PublisherSession) -> None:
        """Run the TLS handshake the session asked for (``S`` is sent), bounded in time."""
        try:
            with gevent.Timeout(DEFAULT.service.tls_handshake_timeout, Closed):
                conn.sock = self.tls.wrap_socket(conn.sock, server_side=True)
        except OSError as exc:  # ssl.SSLError included: a failed handshake ends the connection
            _log.info("TLS handshake with {} failed: {}", conn.peer, exc)
            raise Closed() from exc
        proto.tls_established()

    def _recv(self, conn: Connection, timeout: float | None, streaming: bool = False) -> bytes:
        while True:
            try:
                with gevent.Timeout(timeout, Closed):
                    data = conn.sock.recv(self.limits.publisher_recv_size)
                break
            except Closed:
                # A streaming subscriber that keeps reading what we send is busy, not gone.
                if not (streaming and time.monotonic() - conn.last_sent < timeout):
                    raise
            except OSError as exc:
                raise Closed() from exc
        if not data:
            raise Closed()
        conn.last_recv = time.monotonic()
        return data

    def _serve(self, conn: Connection, proto: PublisherSession) -> None:
        while not conn.closed:
            if proto.phase in (wire.Phase.STARTUP, wire.Phase.AUTHENTICATION):
                timeout = self.limits.publisher_startup_timeout
            elif proto.phase is wire.Phase.COPY_BOTH:
                timeout = self.limits.publisher_stream_idle_timeout
            else:
                timeout = self.limits.publisher_query_idle_timeout
            data = self._recv(conn, timeout, streaming=proto.phase is wire.Phase.COPY_BOTH)
            actions = proto.receive_data(data)
            answer: Any = None
            try:
                while not conn.closed:
                    answer = self._perform(conn, proto, actions.send(answer))
            except StopIteration:
                pass
            finally:
                actions.close()

    def _perform(self, conn: Connection, proto: PublisherSession, action: ps.Action) -> Any:
        """Carry out one action of the session; the value answers its questions."""
        if isinstance(action, ps.Send):
            conn.send(action.data)
        elif isinstance(action, ps.StatusUpdate):
            if conn.session is not None:
                conn.session.on_status(action.update)
        elif isinstance(action, ps.IsReady):
            return self.registry.is_ready(action.name)
        elif isinstance(action, ps.PublicationTables):
            return self.registry.publication_tables(
                action.name, wait=self.limits.publisher_registry_wait if action.wait else 0)
        elif isinstance(action, ps.TableByName):
            return self.registry.table((action.schema, action.table))
        elif isinstance(action, ps.TableById):
            return self.registry.table_by_id(action.relid)
        elif isinstance(action, ps.XLogPos):
            return self._xlogpos(action.slot)
        elif isinstance(action, ps.Log):
            logger.bind(origin=action.origin).log(action.level.upper(), "{}", action.message)
        elif isinstance(action, ps.StartTls):
            self._start_tls(conn, proto)
        elif isinstance(action, ps.StartStreaming):
            self._start_replication(conn, action)
        elif isinstance(action, ps.EndStreaming):
            if action.how is not None:
                self._subscriber_left(conn, action.how)
            self._end_streaming(conn)
        elif isinstance(action, ps.Close):
            self._close(conn, action)
        else:  # pragma: no cover - every action is handled above
            raise TypeError(f"unknown action {action!r}")
        return None

    def _close(self, conn: Connection, action: ps.Close) -> None:
        if action.cause == "auth":
            self.failed_authentications += 1
        if action.log:
            _log.log(action.level.upper(), "{}", action.log)
        if action.cause == "terminate" and conn.session is not None:
            self._subscriber_left(conn, "it disconnected")
        if action.message:
            try:
                conn.send(action.message)
            except Closed:
                pass
        if conn.session is not None:
            conn.session.stop()
        conn.close()

    @staticmethod
    def _subscriber_left(conn: Connection, how: str) -> None:
        """One line when a subscriber stops streaming on its own (it reconnects by itself);
        sessions Electric ends (reset, hand-over, shutdown) are logged where they end."""
        session = conn.session
        if session is not None and not session.finished.is_set():
            session.log.info("Postgres {} stopped streaming from Electric ({})", session.slot,
                             how)

    def _xlogpos(self, slot: str) -> Lsn:
        state = self._slots.get(slot)
        if state is not None and state.session is not None:
            return state.session.encoder.current_lsn
        last = self.offsets.last_pg_mapping(slot) if slot else None
        return Lsn(last[0]) if last else Lsn(1)

    # -- streaming -----------------------------------------------------------------------

    def _start_replication(self, conn: Connection, action: ps.StartStreaming) -> None:
        slot = action.slot
        state = self._slot(slot)
        failing = check_apply_loop(state, action.lsn)
        if failing is not None:
            logger.bind(origin=slot).warning(
                "subscriber {} keeps failing to apply the transaction finishing at {} "
                "({} attempts); see its server log, fix the cause or skip it with "
                "ALTER SUBSCRIPTION {} SKIP (lsn = '{}')",
                slot, Lsn(failing), state.apply_failures, slot, Lsn(failing),
            )
        if state.session is not None:
            logger.bind(origin=slot).warning(
                "slot {} was still streaming to {}; handing it to {}",
                slot,
                state.session.conn.peer,
                conn.peer,
            )
            state.session.stop()
        conn.send(action.copy_both)
        session = StreamSession(self, conn, state, action.lsn)
        conn.session = session
        state.session = session
        state.sessions += 1
        state.sent_lsn = state.flushed_lsn = action.lsn
        session.start()

    def _end_streaming(self, conn: Connection) -> None:
        session = conn.session
        if session is None:
            return
        conn.session = None
        session.finished.set()
        # Under the write lock, so the sender is never cut off in the middle of a frame.
        with conn.write_lock:
            for g in session.greenlets:
                g.kill(block=True)
        session.record_end()


def vaxine_stream_opener(
    host: str, port: int, *, connect_timeout_ms: int = 5000, buffer_size: int = 50
) -> OpenStream:
    """An ``open_stream`` reading Vaxine's WAL stream (port 8088) for the publisher.

    Offsets are stored as ``term_to_binary({L, R})`` bytes; ``None`` starts from the beginning.
    The stream is closed when the session ends (the generator is closed by the feeder).
    """
    from electric.vaxine.offset import VaxineOffset
    from electric.vaxine.stream import WalStream

    def open_stream(after: bytes | None) -> Iterator[tuple[Transaction, bytes]]:
        start = 0 if after is None else VaxineOffset.from_bytes(after)
        stream = WalStream(
            host,
            port,
            start,
            connect_timeout_ms=connect_timeout_ms,
            buffer_size=buffer_size,
            name="publisher",
        )
        try:
            for tx, offset in stream:
                yield tx, VaxineOffset.of(offset).to_bytes()
        finally:
            stream.close()

    return open_stream
