"""One slot's streaming session on one subscriber connection (the gevent side of 5433).

``publisher.py`` accepts connections and runs each one's protocol (``publisher_session.py``);
when a subscriber sends ``START_REPLICATION`` it starts a :class:`StreamSession` here:

* a *feeder* greenlet reads ``open_stream(after_offset)`` into a bounded queue (back-pressure
  on the log reader), bounded in transactions and in changes;
* a *sender* greenlet encodes batches of transactions, stores their ``end_lsn → offset``
  mappings with one fsync per batch **before** sending them (so every LSN a subscriber can
  report is mapped), then writes the batch; keepalives at start, every
  ``publisher_keepalive_interval`` and on request; a held slot (``SlotState.released``
  cleared) gets keepalives only;
* every write goes through the :class:`Connection`'s lock, because the connection greenlet
  (keepalive replies, CopyDone) writes to the same socket.

What was sent and confirmed, lag, and when to collect mappings are decided by the sans-I/O
``publisher_progress.py``; this module only moves bytes and greenlets.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue
from loguru import logger

from electric.changes import Transaction
from electric.postgres import copyboth, pgtime, wire
from electric.postgres.lsn import Lsn
from electric.postgres.publisher_progress import SlotState, StreamProgress
from electric.postgres.slot import SlotEncoder, plan_resume

if TYPE_CHECKING:
    from electric.postgres.publisher import Publisher

__all__ = ["Closed", "Connection", "StreamSession"]



class Closed(Exception):
    """The connection is finished (peer gone, Terminate, or we closed it)."""


class Connection:
    """One accepted socket: the write lock every writer takes, liveness times, and the
    streaming session running on it (the protocol state is the shell's ``PublisherSession``)."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.write_lock = Semaphore()
        self.closed = False
        self.session: StreamSession | None = None
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
                raise Closed()
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.close()
                raise Closed() from exc
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



class StreamSession:
    """One streaming session of one slot over one connection."""

    def __init__(self, publisher: Publisher, conn: Connection, state: SlotState, start_lsn: int):
        self.publisher = publisher
        self.conn = conn
        self.state = state
        self.slot = state.name
        self.log = logger.bind(origin=self.slot, pg_slot=self.slot)
        self.requested = Lsn(start_lsn)
        self.encoder = SlotEncoder(self._lookup, self.requested, name=self.slot,
                                   shared=publisher.encodings)
        self.limits = publisher.limits
        self.queue: Queue = Queue(maxsize=self.limits.publisher_queue_transactions)
        # The queue is also bounded in changes, so that large transactions read ahead of a
        # slow subscriber cannot pile up in memory (a transaction count alone does not bound
        # it); a transaction is always let in when the queue is empty.
        self.queued_changes = 0
        self.queue_room = Event()
        self.greenlets: list[gevent.Greenlet] = []
        self.finished = Event()
        self.missing: set = set()
        self.progress = StreamProgress(int(self.requested), time.monotonic(), self.limits)
        self.started_at = time.time()

    def _lookup(self, relation):
        # The encoder asks once per table and session; an unknown table costs one wait for
        # the registry, then is skipped quickly for the rest of the session.
        custom = self.publisher.table_lookup
        if custom is not None:
            table = custom(self.slot, relation)
            if table is not None:
                return table
        wait = 0 if relation in self.missing else self.limits.publisher_registry_wait
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
            self.state.previous = self.progress.ending()

    # -- log side ----------------------------------------------------------------------

    def _feed(self, after: bytes | None) -> None:
        pending = sorted(self.state.backfill)
        if pending and after is None:
            self.state.backfill.clear()  # a new subscriber receives every row anyway
        elif pending:
            # Positioned where the subscriber already is: applying it moves nothing in the log.
            tx = self.publisher.open_snapshot(pending)
            self.progress.backfill_started(set(pending))
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
        while self.queued_changes >= self.limits.publisher_queue_changes:
            self.queue_room.clear()
            self.queue_room.wait()
        self.queue.put((tx, offset))
        self.queued_changes += len(tx.changes)

    def _dequeued(self, batch: list) -> None:
        self.queued_changes -= sum(len(tx.changes) for tx, _ in batch)
        self.queue_room.set()

    # -- socket side -------------------------------------------------------------------

    def keepalive(self, reply: bool = False) -> None:
        if self.progress.want_reply(time.monotonic() - self.conn.last_recv):
            reply = True
        self.conn.send(copyboth.primary_keepalive(self.encoder.current_lsn, reply_requested=reply))

    def _send_loop(self) -> None:
        try:
            self.keepalive()
            interval = self.limits.publisher_keepalive_interval
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
                while len(batch) < self.limits.publisher_batch_transactions:
                    try:
                        batch.append(self.queue.get_nowait())
                    except Empty:
                        break
                self._dequeued(batch)
                self._send_batch(batch)
        except Closed:
            pass

    def _send_batch(self, batch: list[tuple[Transaction, bytes]]) -> None:
        small: list[tuple[Transaction, bytes]] = []
        for tx, offset in batch:
            if len(tx.changes) > self.limits.publisher_streamed_transaction:
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
            self.conn.send(b"".join(copyboth.xlog_data(lsn, lsn, payload, send_time)
                                    for lsn, payload in piece))
        self._sent([out])

    def _sent(self, encoded: list) -> None:
        self.progress.sent([(int(out.final_lsn), int(out.end_lsn)) for out in encoded],
                           time.monotonic())
        self.state.sent_lsn = int(self.encoder.current_lsn)
        self.state.sent_transactions += len(encoded)

    def on_status(self, update: wire.StandbyStatusUpdate) -> None:
        conf = self.progress.confirmed(int(update.flushed), int(self.encoder.current_lsn),
                                       time.monotonic())
        flushed = conf.flushed
        self.state.flushed_lsn = max(self.state.flushed_lsn, flushed)
        if flushed > self.requested and self.state.apply_failures:
            self.state.apply_failures = 0  # it got past the failing transaction
            self.state.failing_lsn = None
        self.state.backfill -= conf.backfill_done
        if update.reply_requested:
            self.keepalive()
        if conf.collect_upto is not None:
            self.publisher.offsets.gc_pg_mappings(self.slot, conf.collect_upto)

    def status(self) -> dict[str, Any]:
        lag = self.progress.lag(time.monotonic())
        return {
            "client": self.conn.peer,
            "started_at": self.started_at,
            "start_lsn": str(self.requested),
            "pending_transactions": len(self.progress.unconfirmed),
            "lag_seconds": round(lag, 3),
            "buffered_transactions": self.queue.qsize(),
        }
