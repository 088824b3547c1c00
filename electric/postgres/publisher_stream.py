"""One slot's streaming session on one subscriber connection (the gevent side of 5433).

``publisher.py`` accepts connections and runs each one's protocol (``publisher_session.py``);
when a subscriber sends ``START_REPLICATION`` it starts a :class:`StreamSession` here:

* a *feeder* greenlet reads ``open_stream(after_offset)`` into a bounded queue (back-pressure
  on the log reader), bounded in transactions and in changes;
* a *sender* greenlet encodes batches of transactions, stores their ``end_lsn → offset``
  mappings with one fsync per batch **before** sending them (so every LSN a subscriber can
  report is mapped), then writes the batch; keepalives at start, every
  ``publisher_keepalive_interval`` and on request; a held slot (:class:`SlotState` ``released``
  cleared) gets keepalives only;
* every write goes through the :class:`Connection`'s lock, because the connection greenlet
  (keepalive replies, CopyDone) writes to the same socket.

:class:`SlotState` is what ``status()`` reports for a slot and survives sessions;
:func:`check_apply_loop` spots a subscriber stuck on one transaction.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue
from loguru import logger

from electric.changes import Transaction
from electric.postgres import pgtime, wire
from electric.postgres.lsn import Lsn
from electric.postgres.slot import SlotEncoder, plan_resume

if TYPE_CHECKING:
    from electric.postgres.publisher import Publisher

__all__ = ["Closed", "Connection", "SlotState", "StreamSession", "check_apply_loop"]



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



@dataclass
class SlotState:
    """What status() reports for a slot; survives sessions."""

    name: str
    released: Event
    session: StreamSession | None = None
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
        # (end_lsn, sent monotonic time) of transactions not confirmed yet; capped so a
        # subscriber that never confirms cannot grow it without bound (only lag gets coarser).
        self.unconfirmed: deque[tuple[int, float]] = deque(
            maxlen=self.limits.publisher_unconfirmed_transactions)
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
        # Ask for a reply when the subscriber has been silent for a while, so a healthy but
        # quiet subscriber (status interval disabled) is not mistaken for a dead one.
        if time.monotonic() - self.conn.last_recv > self.limits.publisher_stream_idle_timeout / 3:
            reply = True
        self.conn.send(wire.primary_keepalive(self.encoder.current_lsn, reply_requested=reply))

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
        if flushed > self.requested and now - self.last_gc >= self.limits.publisher_gc_interval:
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



def check_apply_loop(state: SlotState, requested: int) -> None:
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
