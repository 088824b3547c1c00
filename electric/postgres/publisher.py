"""Electric as a logical-replication publisher on ``POSTGRES_REPLICATION_PORT`` (5433).

Each connected Postgres has a subscription pointing here; its apply worker connects, asks
for ``START_REPLICATION SLOT "<subscription>" LOGICAL <lsn>`` and receives the merged log of
every writer as pgoutput (the encoding and numbering live in ``slot.py``, the upsert contract
in ``upsert.py``, the message codec in ``wire.py``). This module is the thin gevent layer:

* a ``StreamServer``; one greenlet per connection, reading into the sans-I/O
  :class:`~electric.postgres.wire.BackendConnection`; every write to a socket goes through one
  lock per socket, because while streaming both the connection greenlet (keepalive replies,
  CopyDone) and the slot's sender greenlet write to it;
* TLS when configured: ``SSLRequest`` is answered ``S`` and the session runs over TLS (then
  required: a plaintext StartupMessage gets FATAL 28000); GSSENCRequest is always declined;
* every session first proves the replication password with SCRAM-SHA-256 (``scram.py``);
  any failure is FATAL 28P01, before anything about connectors is looked at;
* admission only for ``replication=database`` connections whose ``application_name`` names a
  connector the registry marks ready (FATAL 08004 otherwise; Postgres retries by itself);
* at most ``max_connections`` open connections; one more gets FATAL 53300 and is closed;
* every command the subscriber may send is answered; anything else gets ErrorResponse +
  ReadyForQuery and the connection stays usable. Protocol violations get a FATAL
  ErrorResponse and a clean close of *that* connection only;
* per slot at most one streaming session. A new ``START_REPLICATION`` for a slot takes the slot
  over (the old socket is closed): the subscriber only reconnects when its previous worker is
  gone, so the old socket is a half-dead leftover;
* per session: a *feeder* greenlet reads ``open_stream(after_offset)`` into a bounded queue
  (back-pressure on the log reader), a *sender* greenlet encodes batches of transactions,
  stores their ``end_lsn → offset`` mappings with one fsync per batch **before** sending them
  (so every LSN a subscriber can report is mapped), then writes the batch; keepalives at start,
  every ``keepalive_interval`` and on request;
* a slot can be *held* (:meth:`Publisher.hold`): the subscriber may connect and gets
  keepalives, but no data until :meth:`Publisher.release`. Subscription setup holds the slot
  until ``REFRESH PUBLICATION`` has marked the tables ready, because a stock subscriber drops
  changes for tables it does not know yet and never asks for them again (the setup window of
  docs/protocols.md §2.6). Slots start held when ``hold_until_released`` is set.

Status (per slot): streaming or not, sent and confirmed (flushed) positions, how many sent
transactions the subscriber has not confirmed yet and for how long (``lag_seconds``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue
from gevent.server import StreamServer
from loguru import logger

from electric import tls as tls_settings
from electric.changes import RelationName, Table, Transaction
from electric.postgres import commands, pgtime, replies, wire
from electric.postgres.lsn import Lsn
from electric.postgres.scram import AuthenticationFailed, ScramExchange, ScramVerifier
from electric.postgres.shared_encode import DEFAULT_MAX_BYTES as DEFAULT_ENCODE_CACHE_BYTES
from electric.postgres.shared_encode import SharedEncodings
from electric.postgres.slot import SlotEncoder, plan_resume
from electric.schema import SchemaRegistry

__all__ = ["Publisher", "OpenStream", "vaxine_stream_opener"]

# Transactions with more changes than this are encoded and sent piece by piece.
STREAMED_TRANSACTION = 5000
# Changes read ahead of a subscriber at most (per session; see _Session.queued_changes).
QUEUE_CHANGES = 20_000

OpenStream = Callable[[bytes | None], Iterable[tuple[Transaction, bytes]]]
"""``open_stream(after_offset)``: the log from just after ``after_offset`` (``None`` = from the
start), as ``(Transaction, offset)`` in log order. It may block; it is read in its own greenlet."""

DEFAULT_KEEPALIVE_INTERVAL = 10.0
STARTUP_TIMEOUT = 10.0  # the reference used 100 ms, which is fragile on slow links
QUERY_IDLE_TIMEOUT = 300.0
STREAM_IDLE_TIMEOUT = 120.0  # subscribers send a status update at least every 10 s
REGISTRY_WAIT = 3.0
DEFAULT_MAX_CONNECTIONS = 10_000
REFUSAL_LINGER = 2.0  # how long a refused peer may take to read its FATAL before we close
GC_INTERVAL = 30.0
RECV_SIZE = 65536

_log = logger.bind(origin="publisher")


class _Closed(Exception):
    """The connection is finished (peer gone, Terminate, or we closed it)."""


class _Conn:
    """One accepted socket: write lock + protocol state."""

    _ids = itertools.count(1)

    def __init__(self, sock: socket.socket, address: Any, *, tls_offered: bool = False,
                 verifier: ScramVerifier) -> None:
        self.sock = sock
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self.proto = wire.BackendConnection(auth_required=True, tls_offered=tls_offered)
        self.scram: ScramExchange = verifier.exchange()
        self.startup: wire.StartupMessage | None = None
        self.pid = (os.getpid() << 12 | next(self._ids)) & 0x7FFFFFFF
        self.secret = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
        self.write_lock = Semaphore()
        self.closed = False
        self.app_name = ""
        self.database = ""
        self.session: _Session | None = None
        self.skip_until_sync = False
        self.last_recv = time.monotonic()
        # When a send last completed: the peer is reading what we write, so it is alive even
        # while it says nothing (Postgres' apply worker sends no status update while it
        # works through one large transaction).
        self.last_sent = time.monotonic()

    def send(self, data: bytes) -> None:
        if not data:
            return
        with self.write_lock:
            if self.closed:
                raise _Closed()
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.close()
                raise _Closed() from exc
            self.last_sent = time.monotonic()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@dataclass
class _SlotState:
    """What status() reports for a slot; survives sessions."""

    name: str
    released: Event
    session: _Session | None = None
    sent_lsn: int = 0
    flushed_lsn: int = 0
    sent_transactions: int = 0
    sessions: int = 0
    last_reason: str = ""
    # How the previous session ended: (requested lsn, final_lsn of the first transaction it
    # sent or None, highest flushed position the subscriber reported).
    previous: tuple[int, int | None, int] | None = None
    apply_failures: int = 0  # consecutive sessions that died on the same transaction
    failing_lsn: int | None = None
    # Tables whose rows this subscriber must be sent whole (it got them after the log
    # already went past their rows: tables added later); cleared once it confirmed them.
    backfill: set = field(default_factory=set)


class _Session:
    """One streaming session of one slot over one connection."""

    def __init__(self, publisher: Publisher, conn: _Conn, state: _SlotState, start_lsn: int):
        self.publisher = publisher
        self.conn = conn
        self.state = state
        self.slot = state.name
        self.log = logger.bind(origin=self.slot, pg_slot=self.slot)
        self.requested = Lsn(start_lsn)
        self.encoder = SlotEncoder(self._lookup, self.requested, name=self.slot,
                                   shared=publisher.encodings)
        self.queue: Queue = Queue(maxsize=publisher.queue_size)
        # The queue is also bounded in changes, so that large transactions read ahead of a
        # slow subscriber cannot pile up in memory (a transaction count alone does not bound
        # it); a transaction is always let in when the queue is empty.
        self.queued_changes = 0
        self.queue_room = Event()
        # (end_lsn, sent monotonic time) of transactions not confirmed yet; capped so a
        # subscriber that never confirms cannot grow it without bound (only lag gets coarser).
        self.unconfirmed: deque[tuple[int, float]] = deque(maxlen=100_000)
        self.greenlets: list[gevent.Greenlet] = []
        self.finished = Event()
        self.missing: set = set()
        self.first_final_lsn: int | None = None
        self.max_flushed = 0
        self.last_gc = time.monotonic()
        self.started_at = time.time()
        self.backfill_sent: set = set()
        self.backfill_end: int | None = None

    def _lookup(self, relation):
        # The encoder asks once per table and session; an unknown table costs one wait for
        # the registry, then is skipped quickly for the rest of the session.
        custom = self.publisher.table_lookup
        if custom is not None:
            table = custom(self.slot, relation)
            if table is not None:
                return table
        wait = 0 if relation in self.missing else REGISTRY_WAIT
        table = self.publisher.registry.table(relation, wait=wait)
        if table is None:
            self.missing.add(relation)
        return table

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        store = self.publisher.offsets
        plan = plan_resume(store, self.slot, self.requested)
        if plan.anchor is not None:
            store.put_pg_mapping(self.slot, *plan.anchor)
        self.after_offset = plan.after_offset
        self.log.info(
            "Starting replication to {} from {} ({} position{})",
            self.slot,
            self.requested,
            plan.reason,
            "" if plan.after_offset is not None else ", whole log",
        )
        self.state.last_reason = plan.reason
        self.greenlets = [
            gevent.spawn(self._feed, plan.after_offset),
            gevent.spawn(self._send_loop),
        ]
        for g in self.greenlets:
            g.link(self._greenlet_done)

    def _greenlet_done(self, g: gevent.Greenlet) -> None:
        if not self.finished.is_set():
            self.stop()

    def stop(self) -> None:
        """End the session and close its connection (the subscriber will reconnect)."""
        if self.finished.is_set():
            return
        self.finished.set()
        current = gevent.getcurrent()
        for g in self.greenlets:
            if g is not current:
                g.kill(block=False)
        self.record_end()
        self.conn.close()

    def record_end(self) -> None:
        """Remember how this session ended (for error-loop detection); detach from the slot."""
        if self.state.session is self:
            self.state.session = None
            self.state.previous = (int(self.requested), self.first_final_lsn, self.max_flushed)

    # -- log side ----------------------------------------------------------------------

    def _feed(self, after: bytes | None) -> None:
        pending = sorted(self.state.backfill)
        if pending and after is None:
            self.state.backfill.clear()  # a new subscriber receives every row anyway
        elif pending:
            # Positioned where the subscriber already is: applying it moves nothing in the log.
            tx = self.publisher.open_snapshot(pending)
            self.backfill_sent = set(pending)
            self.log.info("sending the current rows of {} to {}",
                          ", ".join(f"{s}.{t}" for s, t in pending), self.slot)
            self._enqueue(tx, after)
        stream = self.publisher.open_stream(after)
        try:
            for tx, offset in stream:  # strictly after ``after``: the stream's contract
                self._enqueue(tx, offset)
        except Exception as exc:  # the log went away: end the session, the subscriber retries
            self.log.warning("log stream for {} ended: {}: {}", self.slot, type(exc).__name__, exc)
        else:
            self.log.warning("log stream for {} ended", self.slot)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - best effort while tearing down
                    pass

    def _enqueue(self, tx: Transaction, offset: bytes | None) -> None:
        while self.queued_changes >= QUEUE_CHANGES:
            self.queue_room.clear()
            self.queue_room.wait()
        self.queue.put((tx, offset))
        self.queued_changes += len(tx.changes)

    def _dequeued(self, batch: list) -> None:
        self.queued_changes -= sum(len(tx.changes) for tx, _ in batch)
        self.queue_room.set()

    # -- socket side -------------------------------------------------------------------

    def keepalive(self, reply: bool = False) -> None:
        # Ask for a reply when the subscriber has been silent for a while, so a healthy but
        # quiet subscriber (status interval disabled) is not mistaken for a dead one.
        if time.monotonic() - self.conn.last_recv > STREAM_IDLE_TIMEOUT / 3:
            reply = True
        self.conn.send(wire.primary_keepalive(self.encoder.current_lsn, reply_requested=reply))

    def _send_loop(self) -> None:
        try:
            self.keepalive()
            interval = self.publisher.keepalive_interval
            released = self.state.released
            while True:
                if not released.is_set():
                    if not released.wait(interval):
                        self.keepalive()
                        continue
                try:
                    first = self.queue.get(timeout=interval)
                except Empty:
                    self.keepalive()
                    continue
                batch = [first]
                while len(batch) < self.publisher.batch_size:
                    try:
                        batch.append(self.queue.get_nowait())
                    except Empty:
                        break
                self._dequeued(batch)
                self._send_batch(batch)
        except _Closed:
            pass

    def _send_batch(self, batch: list[tuple[Transaction, bytes]]) -> None:
        small: list[tuple[Transaction, bytes]] = []
        for tx, offset in batch:
            if len(tx.changes) > STREAMED_TRANSACTION:
                self._send_small(small)
                small = []
                self._send_streamed(tx, offset)
            else:
                small.append((tx, offset))
        self._send_small(small)

    def _send_small(self, batch: list[tuple[Transaction, bytes]]) -> None:
        frames: list[bytes] = []
        mappings: list[tuple[int, bytes]] = []
        encoded = []
        send_time = pgtime.pg_now_micros()  # one clock read per batch, not per message
        for tx, offset in batch:
            # Row messages are encoded once for all sessions (shared_encode.py); this
            # session only numbers and frames them.
            out = self.encoder.encode_frames(tx, offset, send_time)
            if out is None:
                continue
            encoded.append(out)
            mappings.append((int(out.end_lsn), out.offset))
            frames.extend(out.frames)
        if not encoded:
            return
        # Durable before sent: any LSN the subscriber can report back is then mapped.
        self.publisher.offsets.put_pg_mappings(self.slot, mappings)
        self.log.debug("Sending {} transaction(s) to the subscriber", len(encoded))
        self.conn.send(b"".join(frames))
        self._sent(encoded)

    def _send_streamed(self, tx: Transaction, offset: bytes) -> None:
        """A big transaction goes out piece by piece as it is read from the log, so neither
        it nor its encoding is ever whole in memory."""
        out, pieces = self.encoder.encode_streamed(tx, offset)
        self.publisher.offsets.put_pg_mappings(self.slot, [(int(out.end_lsn), out.offset)])
        self.log.info("Sending a transaction of {} changes to the subscriber", out.changes)
        for piece in pieces:
            send_time = pgtime.pg_now_micros()
            self.conn.send(b"".join(wire.xlog_data(lsn, lsn, payload, send_time)
                                    for lsn, payload in piece))
        self._sent([out])

    def _sent(self, encoded: list) -> None:
        if self.backfill_sent and self.backfill_end is None:
            self.backfill_end = int(encoded[0].end_lsn)  # the backfill goes out first
        now = time.monotonic()
        if self.first_final_lsn is None:
            self.first_final_lsn = int(encoded[0].final_lsn)
        for out in encoded:
            self.unconfirmed.append((int(out.end_lsn), now))
        self.state.sent_lsn = int(self.encoder.current_lsn)
        self.state.sent_transactions += len(encoded)

    def on_status(self, update: wire.StandbyStatusUpdate) -> None:
        # Only positions we actually sent count (a confused subscriber cannot confirm more).
        flushed = min(int(update.flushed), int(self.encoder.current_lsn))
        self.state.flushed_lsn = max(self.state.flushed_lsn, flushed)
        self.max_flushed = max(self.max_flushed, flushed)
        if flushed > self.requested and self.state.apply_failures:
            self.state.apply_failures = 0  # it got past the failing transaction
            self.state.failing_lsn = None
        while self.unconfirmed and self.unconfirmed[0][0] <= flushed:
            self.unconfirmed.popleft()
        if self.backfill_end is not None and flushed >= self.backfill_end:
            self.state.backfill -= self.backfill_sent  # applied: not needed again
            self.backfill_sent, self.backfill_end = set(), None
        if update.reply_requested:
            self.keepalive()
        now = time.monotonic()
        if flushed > self.requested and now - self.last_gc >= self.publisher.gc_interval:
            # Everything up to `flushed` has been processed by the subscriber; plan_resume
            # copes with a later request below the oldest kept mapping.
            self.last_gc = now
            self.publisher.offsets.gc_pg_mappings(self.slot, flushed)

    def status(self) -> dict[str, Any]:
        lag = time.monotonic() - self.unconfirmed[0][1] if self.unconfirmed else 0.0
        return {
            "client": self.conn.peer,
            "started_at": self.started_at,
            "start_lsn": str(self.requested),
            "pending_transactions": len(self.unconfirmed),
            "lag_seconds": round(lag, 3),
            "buffered_transactions": self.queue.qsize(),
        }


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
        keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        hold_until_released: bool = True,
        queue_size: int = 256,
        batch_size: int = 64,
        server_version: str = replies.DEFAULT_SERVER_VERSION,
        gc_interval: float = GC_INTERVAL,
        table_lookup: Callable[[str, RelationName], Table | None] | None = None,
        open_snapshot: Callable[[list[RelationName]], Transaction] | None = None,
        password: str,
        tls: Any = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        encode_cache_bytes: int = DEFAULT_ENCODE_CACHE_BYTES,
    ) -> None:
        self.registry = registry
        # ``open_snapshot(relations)``: the log's current rows of those tables as one
        # transaction (for backfills); ``None`` when the log cannot give it.
        self.open_snapshot = open_snapshot
        self.verifier = ScramVerifier.from_password(password)
        self.tls = tls
        self.max_connections = max_connections
        self.refused_connections = 0
        self.failed_authentications = 0
        self.offsets = offsets
        self.open_stream = open_stream
        self.host = host
        self._port = port
        self.system_id = system_id
        self.keepalive_interval = keepalive_interval
        self.hold_until_released = hold_until_released
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.server_version = server_version
        self.gc_interval = gc_interval
        # (slot, relation) -> the table as that subscriber's Postgres has it (e.g. its
        # connector's own view after a migration); falls back to the global registry.
        self.table_lookup = table_lookup
        self._slots: dict[str, _SlotState] = {}
        # Row messages of log transactions, encoded once for every subscriber session.
        self.encodings = SharedEncodings(encode_cache_bytes)
        self._conns: set[_Conn] = set()
        self._server: StreamServer | None = None
        digest = hashlib.sha256(system_id.encode()).digest()
        # IDENTIFY_SYSTEM's systemid: a stable 19-digit number like a real cluster's.
        self._sysid = str(int.from_bytes(digest[:8], "big") % 9 * 10**18 + 10**18)

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

    def _slot(self, name: str) -> _SlotState:
        state = self._slots.get(name)
        if state is None:
            released = Event()
            if not self.hold_until_released:
                released.set()
            state = self._slots[name] = _SlotState(name, released)
        return state

    def _handle(self, sock: socket.socket, address: Any) -> None:
        if len(self._conns) >= self.max_connections:
            self._refuse(sock, address)
            return
        conn = _Conn(sock, address, tls_offered=self.tls is not None, verifier=self.verifier)
        self._conns.add(conn)
        try:
            self._serve(conn)
        except _Closed:
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
            with gevent.Timeout(REFUSAL_LINGER, False):
                while sock.recv(RECV_SIZE):
                    pass
        except OSError:
            pass
        finally:
            sock.close()

    def _start_tls(self, conn: _Conn) -> None:
        """Answer an SSLRequest with ``S`` and run the handshake, bounded in time."""
        conn.send(replies.encryption_accepted())
        try:
            with gevent.Timeout(tls_settings.HANDSHAKE_TIMEOUT, _Closed):
                conn.sock = self.tls.wrap_socket(conn.sock, server_side=True)
        except OSError as exc:  # ssl.SSLError included: a failed handshake ends the connection
            _log.info("TLS handshake with {} failed: {}", conn.peer, exc)
            raise _Closed() from exc
        conn.proto.tls_established()

    def _recv(self, conn: _Conn, timeout: float | None, streaming: bool = False) -> bytes:
        while True:
            try:
                with gevent.Timeout(timeout, _Closed):
                    data = conn.sock.recv(RECV_SIZE)
                break
            except _Closed:
                # A streaming subscriber that keeps reading what we send is busy, not gone.
                if not (streaming and time.monotonic() - conn.last_sent < timeout):
                    raise
            except OSError as exc:
                raise _Closed() from exc
        if not data:
            raise _Closed()
        conn.last_recv = time.monotonic()
        return data

    def _serve(self, conn: _Conn) -> None:
        proto = conn.proto
        while not conn.closed:
            if proto.phase in (wire.Phase.STARTUP, wire.Phase.AUTHENTICATION):
                timeout = STARTUP_TIMEOUT
            elif proto.phase is wire.Phase.COPY_BOTH:
                timeout = STREAM_IDLE_TIMEOUT
            else:
                timeout = QUERY_IDLE_TIMEOUT
            data = self._recv(conn, timeout, streaming=proto.phase is wire.Phase.COPY_BOTH)
            try:
                events = proto.receive_data(data)
            except wire.ProtocolError as exc:
                _log.warning("closing connection from {}: {}", conn.peer, exc)
                self._fatal(conn, replies.fatal_for(exc))
                return
            for event in events:
                self._on_event(conn, event)
                if conn.closed:
                    return

    def _fatal(self, conn: _Conn, message: bytes) -> None:
        try:
            conn.send(message)
        except _Closed:
            pass
        if conn.session is not None:
            conn.session.stop()
        conn.close()

    def _on_event(self, conn: _Conn, event: Any) -> None:
        if isinstance(event, wire.SSLRequest) and self.tls is not None:
            self._start_tls(conn)
        elif isinstance(event, wire.SSLRequest | wire.GSSENCRequest):
            conn.send(replies.encryption_denied())
        elif isinstance(event, wire.StartupMessage):
            conn.startup = event
            conn.send(conn.scram.start())
        elif isinstance(event, wire.SASLInitialResponse | wire.SASLResponse):
            self._on_password(conn, event)
        elif isinstance(event, wire.Query):
            self._on_query(conn, event.text)
        elif isinstance(event, wire.StandbyStatusUpdate):
            if conn.session is not None:
                conn.session.on_status(event)
        elif isinstance(event, wire.HotStandbyFeedback):
            pass  # physical-standby feedback; nothing to do for a logical stream
        elif isinstance(event, wire.CopyDone):
            self._subscriber_left(conn, "it ended the stream")
            self._end_streaming(conn)
            conn.send(
                wire.copy_done()
                + replies.command_complete("COPY 0")
                + replies.command_complete("START_REPLICATION")
                + replies.ready_for_query("I")
            )
        elif isinstance(event, wire.CopyFail):
            self._end_streaming(conn)
            conn.send(
                replies.error_response("ERROR", "57014", f"COPY from client failed: {event.message}")
                + replies.ready_for_query("I")
            )
        elif isinstance(event, wire.Terminate | wire.CancelRequest):
            # Nothing runs long enough here to be worth cancelling; just close.
            if conn.session is not None:
                self._subscriber_left(conn, "it disconnected")
                conn.session.stop()
            conn.close()
        elif isinstance(event, wire.CopyData):
            _log.warning("closing connection from {}: unexpected CopyData payload", conn.peer)
            self._fatal(
                conn,
                replies.error_response("FATAL", "08P01", "unexpected CopyData message from client"),
            )
        elif isinstance(event, wire.UnsupportedMessage):
            self._on_unsupported_message(conn, event)

    @staticmethod
    def _subscriber_left(conn: _Conn, how: str) -> None:
        """One line when a subscriber stops streaming on its own (it reconnects by itself);
        sessions Electric ends (reset, hand-over, shutdown) are logged where they end."""
        session = conn.session
        if session is not None and not session.finished.is_set():
            session.log.info("Postgres {} stopped streaming from Electric ({})", session.slot,
                             how)

    def _on_unsupported_message(self, conn: _Conn, event: wire.UnsupportedMessage) -> None:
        if conn.proto.phase is wire.Phase.QUERY:
            # Extended query protocol: one ERROR, then ignore everything up to Sync, which is
            # answered with ReadyForQuery — exactly how Postgres recovers from such an error.
            if event.tag == "S":
                conn.skip_until_sync = False
                conn.send(replies.ready_for_query("I"))
                return
            if event.tag in "PBDECH":
                if not conn.skip_until_sync:
                    conn.skip_until_sync = True
                    conn.send(
                        replies.error_response(
                            "ERROR", "0A000", "extended query protocol is not supported by Electric"
                        )
                    )
                return
            conn.send(
                replies.error_response("ERROR", "0A000", f"{event.name} is not supported by Electric")
                + replies.ready_for_query("I")
            )
            return
        _log.warning(
            "closing connection from {}: unexpected {} while streaming", conn.peer, event.name
        )
        self._fatal(
            conn,
            replies.error_response(
                "FATAL", "08P01", f"unexpected {event.name} message while streaming"
            ),
        )

    # -- startup -------------------------------------------------------------------------

    def _on_password(self, conn: _Conn, event: Any) -> None:
        try:
            if isinstance(event, wire.SASLInitialResponse):
                conn.send(conn.scram.on_initial_response(event))
                return
            final = conn.scram.on_response(event)
        except AuthenticationFailed as exc:
            user = conn.proto.parameters.get("user", "")
            self.failed_authentications += 1
            _log.warning("password authentication failed for a subscriber from {}: {}",
                         conn.peer, exc)
            self._fatal(conn, replies.error_response(
                "FATAL", "28P01", f'password authentication failed for user "{user}"'))
            return
        conn.send(final)
        conn.proto.authenticated()  # the codec only yields SASL events after a StartupMessage
        self._on_startup(conn, conn.startup)

    def _on_startup(self, conn: _Conn, event: wire.StartupMessage) -> None:
        params = event.parameters
        conn.app_name = params.get("application_name", "")
        conn.database = params.get("database") or params.get("user", "")
        if params.get("replication", "").lower() != "database":
            _log.warning("refused connection from {}: not replication=database", conn.peer)
            self._fatal(
                conn,
                replies.error_response(
                    "FATAL",
                    "08004",
                    "Electric only accepts logical replication connections (replication=database)",
                ),
            )
            return
        if not conn.app_name or not self.registry.is_ready(conn.app_name):
            _log.info(
                "subscriber {!r} from {} is not admitted yet: connector not ready",
                conn.app_name,
                conn.peer,
            )
            self._fatal(
                conn,
                replies.error_response(
                    "FATAL",
                    "08004",
                    f"Electric replication is not ready, missing schema for {conn.app_name}",
                ),
            )
            return
        params_out = replies.server_parameters(params, self.server_version)
        conn.send(replies.startup_response(params_out, conn.pid, conn.secret))

    # -- queries -------------------------------------------------------------------------

    def _reply(self, conn: _Conn, body: bytes, status: str = "I") -> None:
        conn.send(body + replies.ready_for_query(status))

    def _error(self, conn: _Conn, code: str, message: str) -> None:
        self._reply(conn, replies.error_response("ERROR", code, message))

    def _on_query(self, conn: _Conn, text: str) -> None:
        cmd = commands.parse_command(text)
        log = logger.bind(origin=conn.app_name or "publisher")
        # Debug only: the session start is logged at info in words ("Starting replication
        # to ... from ..."), and the raw text would be a repr full of escaped quotes.
        log.debug("query received: {}", " ".join(text.split()))
        if isinstance(cmd, commands.EmptyQuery):
            self._reply(conn, replies.empty_query_response())
        elif isinstance(cmd, commands.SetConfig):
            self._reply(conn, replies.text_result([("set_config", "text")], [[cmd.value]]))
        elif isinstance(cmd, commands.SetParameter):
            self._reply(conn, replies.command_complete("SET"))
        elif isinstance(cmd, commands.Show):
            params = {
                k.lower(): v for k, v in replies.server_parameters({}, self.server_version).items()
            }
            if cmd.name.lower() in params:
                self._reply(
                    conn, replies.text_result([(cmd.name, "text")], [[params[cmd.name.lower()]]])
                )
            else:
                self._error(conn, "42704", f'unrecognized configuration parameter "{cmd.name}"')
        elif isinstance(cmd, commands.IdentifySystem):
            self._reply(
                conn,
                replies.text_result(
                    [
                        ("systemid", "text"),
                        ("timeline", "int4"),
                        ("xlogpos", "text"),
                        ("dbname", "text"),
                    ],
                    [[self._sysid, 1, str(self._xlogpos(conn.app_name)), conn.database or None]],
                    tag="IDENTIFY_SYSTEM",
                ),
            )
        elif isinstance(cmd, commands.ListPublicationTables):
            self._list_tables(conn, cmd)
        elif isinstance(cmd, commands.ListPublications):
            rows = [
                [p] for p in cmd.publications if self.registry.publication_tables(p) is not None
            ]
            self._reply(conn, replies.text_result([("pubname", "name")], rows))
        elif isinstance(cmd, commands.RelationInfo):
            table = self.registry.table((cmd.schema, cmd.table))
            rows = [] if table is None else [[table.oid, table.replica_identity, "r"]]
            self._reply(
                conn,
                replies.text_result(
                    [("oid", "oid"), ("relreplident", "char"), ("relkind", "char")], rows
                ),
            )
        elif isinstance(cmd, commands.RelationColumns):
            self._relation_columns(conn, cmd)
        elif isinstance(cmd, commands.TransactionControl):
            self._reply(conn, replies.command_complete(cmd.kind), "T" if cmd.kind == "BEGIN" else "I")
        elif isinstance(cmd, commands.CreateReplicationSlot):
            self._error(
                conn,
                "0A000",
                "Electric does not create replication slots or export snapshots; "
                "create subscriptions with connect = false or copy_data = false",
            )
        elif isinstance(cmd, commands.DropReplicationSlot):
            # Subscriptions own no server-side state here beyond offset mappings, which a new
            # subscription of the same name (asking for 0/0) supersedes.
            self._reply(conn, replies.command_complete("DROP_REPLICATION_SLOT"))
        elif isinstance(cmd, commands.StartReplication):
            self._start_replication(conn, cmd)
        else:
            log.info("unsupported query from {}: {}", conn.peer, getattr(cmd, "reason", cmd))
            conn.send(replies.unsupported_response(cmd))

    def _xlogpos(self, slot: str) -> Lsn:
        state = self._slots.get(slot)
        if state is not None and state.session is not None:
            return state.session.encoder.current_lsn
        last = self.offsets.last_pg_mapping(slot) if slot else None
        return Lsn(last[0]) if last else Lsn(1)

    def _list_tables(self, conn: _Conn, cmd: commands.ListPublicationTables) -> None:
        rows: list[list[Any]] = []
        seen = set()
        for pub in cmd.publications:
            tables = self.registry.publication_tables(pub, wait=REGISTRY_WAIT)
            if tables is None:
                self._error(conn, "42704", f'publication "{pub}" does not exist')
                return
            for t in tables:
                if t.relation in seen:
                    continue
                seen.add(t.relation)
                row: list[Any] = [t.schema, t.name]
                if cmd.with_attnames:
                    row.append(_name_array(t.column_names()))
                rows.append(row)
        columns: list[tuple[str, str]] = [("schemaname", "name"), ("tablename", "name")]
        if cmd.with_attnames:
            columns.append(("attnames", "_name"))
        self._reply(conn, replies.text_result(columns, rows))

    def _relation_columns(self, conn: _Conn, cmd: commands.RelationColumns) -> None:
        table = self.registry.table_by_id(cmd.relid)
        rows: list[list[Any]] = []
        if table is not None:
            keys = set(table.primary_keys)
            for i, c in enumerate(table.columns, start=1):
                key = True if table.replica_identity == "f" else c.name in keys
                row: list[Any] = [c.name, c.type_oid, key]
                rows.append([i, *row] if cmd.with_attnum else row)
        columns: list[tuple[str, str]] = [
            ("attname", "name"),
            ("atttypid", "oid"),
            ("?column?", "bool"),
        ]
        if cmd.with_attnum:
            columns.insert(0, ("attnum", "int2"))
        self._reply(conn, replies.text_result(columns, rows))

    # -- streaming -----------------------------------------------------------------------

    def _start_replication(self, conn: _Conn, cmd: commands.StartReplication) -> None:
        slot = cmd.slot
        if not self.registry.is_ready(slot):
            self._error(conn, "42704", f'replication slot "{slot}" does not exist')
            return
        if slot != conn.app_name:
            logger.bind(origin=slot).warning(
                "connection {!r} streams slot {!r}: names differ", conn.app_name, slot
            )
        state = self._slot(slot)
        self._check_apply_loop(state, cmd.lsn)
        if state.session is not None:
            logger.bind(origin=slot).warning(
                "slot {} was still streaming to {}; handing it to {}",
                slot,
                state.session.conn.peer,
                conn.peer,
            )
            state.session.stop()
        conn.send(conn.proto.start_copy_both())
        session = _Session(self, conn, state, cmd.lsn)
        conn.session = session
        state.session = session
        state.sessions += 1
        state.sent_lsn = state.flushed_lsn = cmd.lsn
        session.start()

    def _check_apply_loop(self, state: _SlotState, requested: int) -> None:
        """Spot a subscriber stuck on one transaction (docs/protocols.md §2.6).

        A transaction that fails to apply kills the apply worker; Postgres restarts it and it
        asks for the same position again, forever. Signature: the previous session started at
        the same LSN, sent data, and the subscriber never confirmed anything past its start.
        """
        prev = state.previous
        if (
            prev is not None
            and prev[0] == requested
            and prev[1] is not None
            and prev[2] <= requested
        ):
            state.apply_failures += 1
            state.failing_lsn = prev[1]
            if state.apply_failures >= 2:
                logger.bind(origin=state.name).warning(
                    "subscriber {} keeps failing to apply the transaction finishing at {} "
                    "({} attempts); see its server log, fix the cause or skip it with "
                    "ALTER SUBSCRIPTION {} SKIP (lsn = '{}')",
                    state.name,
                    Lsn(prev[1]),
                    state.apply_failures,
                    state.name,
                    Lsn(prev[1]),
                )
        elif prev is None or prev[0] != requested:
            state.apply_failures = 0
            state.failing_lsn = None

    def _end_streaming(self, conn: _Conn) -> None:
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


def _name_array(names: Iterator[str] | list[str]) -> str:
    """A ``name[]`` text literal (``{id,"odd name"}``) for the PG15 attnames column."""
    out = []
    for n in names:
        if n == "" or any(ch in n for ch in ' ,{}"\\') or n.upper() == "NULL":
            out.append('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(n)
    return "{" + ",".join(out) + "}"


def vaxine_stream_opener(
    host: str, port: int, *, connect_timeout_ms: int = 5000, buffer_size: int = 50
) -> OpenStream:
    """An ``open_stream`` reading Vaxine's WAL stream (port 8088) for the publisher.

    Offsets are stored as ``term_to_binary({L, R})`` bytes; ``None`` starts from the beginning.
    The stream is closed when the session ends (the generator is closed by the feeder).
    """
    from electric.vaxine.stream import WalStream, offset_from_bytes, offset_to_bytes

    def open_stream(after: bytes | None) -> Iterator[tuple[Transaction, bytes]]:
        start = 0 if after is None else offset_from_bytes(after)
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
                yield tx, offset_to_bytes(offset)
        finally:
            stream.close()

    return open_stream
