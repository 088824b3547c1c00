"""One Satellite socket: the thin gevent shell around its sans-I/O parts.

The pywsgi handler greenlet of an upgraded socket runs :meth:`Connection.run`: it reads
what the frame reader (:mod:`electric.satellite.websocket`) asks for and feeds the
messages to the socket's :class:`~electric.satellite.session.Session`, carrying out the
actions it returns. Helper greenlets run the outgoing Vaxine WAL stream (one per client,
opened on the client's start request; a caught-up socket is served by the shared tail,
see ``fanout.py``) and the incoming writer (``client_writes.py``); the socket is written
by ``socket_writer.py``. All session calls for one socket happen under one lock, so the
state machine sees one event at a time and frames leave in the order it produced them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
import gevent.lock
from gevent.event import Event

from electric.changes import Transaction
from electric.limits import MIB
from electric.retry import Backoff, Policy
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
from electric.satellite.client_writes import ClientWriter, Write
from electric.satellite.fanout import Subscription
from electric.satellite.lsn import StartOffset
from electric.satellite.outgoing import HeldTransaction
from electric.satellite.session import Session
from electric.satellite.socket_writer import SocketWriter
from electric.satellite.websocket import (
    CloseReceived,
    FrameReader,
    Message,
    Ping,
    Pong,
    binary_frame,
)

if TYPE_CHECKING:
    from electric.satellite.server import SatelliteServer



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


class Connection(SocketWriter, ClientWriter):
    """Everything belonging to one websocket: the session, its lock and its greenlets
    (writing to the socket: :class:`~electric.satellite.socket_writer.SocketWriter`;
    client transactions: :class:`~electric.satellite.client_writes.ClientWriter`)."""

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
                        data = self._read(reader.wanted())
                    if data is None:
                        return
                else:
                    data = self._read(reader.wanted())
            except (OSError, ValueError):
                return
            if not data:
                return  # the peer closed the TCP connection
            reader.receive_data(data)

    def _read(self, wanted: int) -> bytes:
        """Bytes from the socket toward ``wanted``. Small needs (headers, small frames) go
        through the socket's read buffer: one recv brings every frame the peer pipelined,
        and an idle socket waits holding nothing but that buffer. A big payload (already
        reserved in the inbound budget) is read straight, at most 1 MiB at a time."""
        rfile = self.rfile
        if wanted <= self.server.limits.read_buffer:
            buffered = rfile.peek(1)  # waits for data, fills the buffer; consumes nothing
            return rfile.read1(len(buffered))
        return rfile.read1(min(wanted, MIB))

    def _on_frame_event(self, event: websocket.Event) -> bool:
        """False when the connection is done reading."""
        if isinstance(event, Message):
            receive = self.session.receive_text if event.text else self.session.receive
            self._handle(receive, event.data, time.monotonic())
            return True
        if isinstance(event, Ping):
            self.queue_pong(event.payload)  # keeps frame order with our buffered sends
            return True
        if isinstance(event, Pong):
            return True
        if isinstance(event, CloseReceived):
            if event.reply:  # the peer closed first
                self._write_frame(event.reply)
            self.closing = True
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
            self._writer_queue().put(Write(generation, write.transaction))

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
                self._writer_queue().put_nowait(Write(self.write_generation,
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
        try:
            iterator = out.iterator or self._open_stream(subscription, out)
            for tx, tx_offset in iterator:
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
                limits = self.server.limits
                backoff = Backoff(Policy(limits.table_retry_first, limits.table_retry_max))
            gevent.sleep(backoff.next())

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
