"""The source reader: one logical replication stream from a source Postgres into a sink.

One :class:`SourceReader` per connector runs in its own greenlet. It follows the measured
recipe for psycopg2 under gevent (docs/architecture.md §5): an async
``LogicalReplicationConnection``, ``start_replication``/``read_message`` called with the wait
callback lifted (they never yield), ``wait_read`` with a 1 s timeout when idle so psycopg2
can answer keepalives and send its periodic status, and ``gevent.idle()`` every ~5 ms while
draining a backlog so other greenlets keep running.

Durability contract: each assembled transaction that has changes is handed to
``sink(tx)``, which must return only once the transaction is durable (and raise otherwise).
Only then is the transaction's ``end_lsn`` acknowledged to the slot. A failing sink is
retried with capped back-off for as long as it takes; nothing is acknowledged meanwhile and a
heartbeat keeps the walsender from timing the stream out. Empty and dropped transactions are
acknowledged too, so the slot does not lag.

Failure handling: any connection failure (server restart, ``pg_terminate_backend``, network
loss noticed through ``tcp_user_timeout`` or a silent peer noticed by the watchdog) closes the
stream and reconnects with capped back-off; the server resumes from the slot's confirmed
position (``start_lsn = 0``). Transactions already handed to the sink by this reader are
acknowledged without a second delivery, so a reconnect does not duplicate them.

This module is the reading shell. Writing and acknowledging transactions is
``source_delivery.py`` (inherited), the decisions of both are in the sans-I/O
``source_pipeline.py``, and the repairs of a refused stream in ``source_repair.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.socket
import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
import psycopg2.extras
from gevent import Greenlet, GreenletExit
from loguru import logger

from electric.changes import Transaction
from electric.errors import describe
from electric.limits import DEFAULT, PostgresLimits
from electric.postgres import errors as pg_errors
from electric.postgres import green, source_repair
from electric.postgres import pgoutput as po
from electric.postgres.assembler import TableLookup, TransactionAssembler
from electric.postgres.lsn import Lsn
from electric.postgres.source_delivery import Delivery
from electric.postgres.source_pipeline import (
    InFlight,
    StreamLost,
    idle_ack_position,
    stream_options,
)
from electric.retry import Backoff, Policy

Sink = Callable[[Transaction], None]
Submit = Callable[[Transaction], Any]
"""``submit(tx)`` queues ``tx`` for writing without waiting and returns a gevent
``AsyncResult``-like object (``ready``/``successful``/``get``/``wait``); submissions of one
reader become durable in order, and after a failed one every later one fails too (see
:class:`electric.store.service.WriteChain`)."""

# How long the loop may drain a backlog before letting other greenlets run.
_YIELD_EVERY = 0.005


def _read_burst(cur: Any, burst: int) -> list[bytes]:
    """The payloads of up to ``burst`` messages that libpq already has (none: nothing
    to read now). Run without the wait callback (``green.without_callback``): one switch
    per burst instead of per message, which was a measurable share of the reader's CPU."""
    payloads = []
    read = cur.read_message
    while len(payloads) < burst:
        msg = read()
        if msg is None:
            break
        payloads.append(msg.payload)
    return payloads


class SourceReader(Delivery):
    """Streams a slot, hands durable-required transactions to ``sink``, acknowledges them."""

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        slot: str,
        publication: str,
        sink: Sink,
        submit: Submit | None = None,
        begin_big: Callable[[], Any] | None = None,
        spill_after: int = 5000,
        table_lookup: TableLookup | None = None,
        refresh_table: TableLookup | None = None,
        encoding: str = "utf-8",
        drop_origin: Callable[[str], bool] | None = None,
        status_interval: float = 10.0,
        heartbeat_interval: float = 5.0,
        dead_after: float = 30.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 10.0,
        sink_retry_min: float = 0.05,
        sink_retry_max: float = 5.0,
        sink_blocked_retry: float = 30.0,
        tcp_user_timeout_ms: int = 20000,
        limits: PostgresLimits = DEFAULT.postgres,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.sink = sink
        self.submit = submit
        self.read_burst = limits.source_read_burst  # messages per switch of the wait callback
        # ``begin_big()`` opens a store transaction written in pieces (``add``/``commit``/
        # ``abort``): a source transaction of more than ``spill_after`` changes goes there
        # while it is read instead of being held in memory.
        self.begin_big = begin_big
        self.spill_after = spill_after
        self._big: Any = None
        self._cur: Any = None
        # Submitted to the store, not yet acknowledged (acknowledged in order once durable).
        self._in_flight = InFlight(limits.max_in_flight)
        self.table_lookup = table_lookup
        self.refresh_table = refresh_table
        self.encoding = encoding
        self.drop_origin = drop_origin
        self.status_interval = max(1.0, status_interval)  # psycopg2 rejects < 1
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.reconnect = Backoff(Policy(reconnect_min, reconnect_max))
        self.sink_retry_min, self.sink_retry_max = sink_retry_min, sink_retry_max
        self.sink_blocked_retry = sink_blocked_retry
        self.tcp_user_timeout_ms = tcp_user_timeout_ms
        self.log = logger.bind(origin=name)

        # observable state (status())
        self.connected = False
        self.last_acked_lsn: Lsn | None = None
        self.last_error: str | None = None
        self.sink_retrying = False
        # LSN of a transaction the sink refuses as unwritable (not an outage): ingestion is
        # held there until an operator fixes the cause.
        self.blocked_lsn: Lsn | None = None
        self.transactions_written = 0
        self.transactions_acked = 0
        self.reconnects = 0
        self._wal_end = 0  # from keepalives / XLogData headers (raw: read per message)

        self._delivered_lsn: Lsn | None = None
        self._streamed = False  # this connection attempt reached streaming
        self._lost_at: float | None = None  # when a streaming connection was lost
        self._greenlet: Greenlet | None = None
        self._stopping = False
        self._last_read = time.monotonic()
        self._connected_event = gevent.event.Event()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Greenlet:
        if self._greenlet is None or self._greenlet.dead:
            self._stopping = False
            self._greenlet = gevent.spawn(self.run)
            self._greenlet.name = f"source-reader-{self.name}"
        return self._greenlet

    def stop(self, timeout: float = 5.0) -> None:
        """Stop streaming; pending acknowledgements are flushed to the server first."""
        self._stopping = True
        if self._greenlet is not None and not self._greenlet.dead:
            self._greenlet.kill(timeout=timeout)
        self._greenlet = None

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected_event.wait(timeout)

    @property
    def server_wal_end(self) -> Lsn | None:
        """The server's WAL end as last reported (an ``Lsn`` built only when asked: the
        reader sees a new value with every message)."""
        return Lsn(self._wal_end) if self._wal_end else None

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "last_acked_lsn": None if self.last_acked_lsn is None else str(self.last_acked_lsn),
            "transactions_written": self.transactions_written,
            "transactions_acked": self.transactions_acked,
            "sink_retrying": self.sink_retrying,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "blocked_lsn": None if self.blocked_lsn is None else str(self.blocked_lsn),
            "server_wal_end": None if self.server_wal_end is None else str(self.server_wal_end),
            "lag_bytes": self.lag_bytes(),
        }

    def lag_bytes(self) -> int | None:
        """WAL the server has sent or reported past Electric's last acknowledgement: 0 when
        every decoded transaction is durable in Vaxine; grows while a backlog drains or the
        sink is retrying. (WAL Postgres has not decoded yet is not counted: see
        ``pg_replication_slots`` on the server for that.)"""
        if self.server_wal_end is None or self.last_acked_lsn is None:
            return None
        return max(0, int(self.server_wal_end) - int(self.last_acked_lsn))

    def run(self) -> None:
        """Stream until stopped, reconnecting after failures. Runs in its own greenlet."""
        while not self._stopping:
            started = time.monotonic()
            self._streamed = False
            try:
                self._stream()
            except GreenletExit:
                raise
            except (psycopg2.Error, po.ProtocolError, StreamLost, OSError) as exc:
                self._set_disconnected()
                self.last_error = describe(exc)
                if self._stopping:
                    break
                # A stream that ran a while is a fresh failure: start again from the minimum.
                if time.monotonic() - started > self.reconnect.policy.max:
                    self.reconnect.reset()
                delay = self.reconnect.next()
                if isinstance(exc, po.ProtocolError):
                    self.log.error(
                        "replication stream rejected: {}; reconnecting in {:.1f}s",
                        self.last_error,
                        delay,
                    )
                elif isinstance(exc, psycopg2.errors.UndefinedObject):
                    # The slot or publication was dropped under us. Recreate it so
                    # replication goes on; what was written while it was missing is lost.
                    repaired = source_repair.recreate_missing(
                        self.dsn, self.slot, self.publication, self.log)
                    self.log.error(
                        "{}; {}retrying in {:.1f}s",
                        self.last_error,
                        f"recreated {repaired}, changes made while it was missing are not "
                        "replicated; "
                        if repaired
                        else "",
                        delay,
                    )
                elif isinstance(exc, psycopg2.errors.ObjectInUse):
                    # Usually our own previous stream whose walsender has not noticed the
                    # loss yet (it would hold the slot up to wal_sender_timeout).
                    taken = source_repair.take_over_slot(
                        self.dsn, self.slot, self.application_name, self.heartbeat_interval)
                    self.log.info(
                        "slot {} still held by an old connection{}; retrying in {:.1f}s",
                        self.slot,
                        " (terminated it)" if taken else "",
                        delay,
                    )
                elif self._streamed:
                    self._lost_at = time.monotonic()
                    self.log.warning(
                        "Postgres {} went away ({}); reconnecting in {:g} s",
                        self.name, pg_errors.reason(exc), delay,
                    )
                else:
                    self.log.warning(
                        "Postgres {} unreachable ({}); retrying in {:g} s",
                        self.name, pg_errors.reason(exc), delay,
                    )
                self.reconnects += 1
                gevent.sleep(delay)

    # -- streaming ----------------------------------------------------------------------

    @property
    def application_name(self) -> str:
        """How our walsender shows up in pg_stat_replication / pg_stat_activity."""
        return ext.parse_dsn(self.dsn).get("application_name") or f"electric_{self.name}"[:63]

    def _connect(self) -> Any:
        extra = {}
        params = ext.parse_dsn(self.dsn)
        if "tcp_user_timeout" not in params and self.tcp_user_timeout_ms:
            extra["tcp_user_timeout"] = str(self.tcp_user_timeout_ms)
        if "application_name" not in params:
            extra["application_name"] = self.application_name
        return green.connect_async(
            self.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection, **extra
        )

    def _stream(self) -> None:
        conn = self._connect()
        cur = None
        heartbeat = None
        try:
            cur = conn.cursor()
            green.without_callback(
                cur.start_replication,
                slot_name=self.slot,
                decode=False,
                start_lsn=0,
                status_interval=self.status_interval,
                options=stream_options(self.publication, conn.server_version,
                                        self.drop_origin is None),
            )
            green.wait_callback(conn)  # cooperative wait for CopyBoth
            self._set_connected()
            heartbeat = gevent.spawn(self._heartbeat, cur)
            self._consume(conn, cur)
        finally:
            self._cur = None
            if self._big is not None:
                big, self._big = self._big, None
                try:
                    big.abort()
                except Exception as exc:  # the store is failing: it rolled back anyway
                    self.log.warning("aborting the large transaction failed: {}", exc)
            if self._in_flight:
                self._settle_in_flight()
            if heartbeat is not None:
                heartbeat.kill(block=False)
            if cur is not None:
                try:
                    cur.send_feedback(force=True)  # lazy acks would be lost otherwise
                except psycopg2.Error:
                    pass
            try:
                conn.close()
            except psycopg2.Error:
                pass
            self._set_disconnected()

    def _consume(self, conn: Any, cur: Any) -> None:
        assembler = TransactionAssembler(
            self.name,
            self.publication,
            encoding=self.encoding,
            table_lookup=self.table_lookup,
            refresh_table=self.refresh_table,
            drop_origin=self.drop_origin,
            on_spill=self._spill if self.begin_big is not None else None,
            spill_after=self.spill_after,
        )
        self._cur = cur
        fd = conn.fileno()
        last_yield = time.monotonic()
        last_io = cur.io_timestamp
        last_activity = time.monotonic()
        read_burst = self.read_burst
        while True:
            burst = green.without_callback(_read_burst, cur, read_burst)
            self._last_read = time.monotonic()
            if cur.wal_end:
                self._wal_end = cur.wal_end
            if not burst:
                if self._in_flight:  # nothing to read: acknowledge what became durable
                    self._drain(cur, wait_all=True)
                self._ack_idle_position(cur, assembler)
                # Keepalives are consumed inside read_message and only show in io_timestamp,
                # which psycopg2 also bumps when it sends feedback: a change that differs
                # from feedback_timestamp means something was received.
                io = cur.io_timestamp
                if io != last_io and io != cur.feedback_timestamp:
                    last_activity = self._last_read
                last_io = io
                if self._last_read - last_activity > self.dead_after:
                    raise StreamLost(f"nothing received for {self.dead_after:g}s")
                try:
                    gevent.socket.wait_read(fd, timeout=1.0)
                except gevent.socket.timeout:
                    pass
                last_yield = time.monotonic()
                continue
            feed = assembler.feed_bytes
            for payload in burst:
                committed = feed(payload)
                if committed is not None:
                    self._finish(cur, committed)
            last_activity = time.monotonic()
            if last_activity - last_yield > _YIELD_EVERY:
                gevent.idle()  # NOT sleep(0): that starves timers and I/O (see the report)
                last_yield = time.monotonic()

    def _ack_idle_position(self, cur: Any, assembler: TransactionAssembler) -> None:
        """Nothing to read and no transaction half-received: everything the server has
        decoded up to its last reported position is either written or of no interest to us
        (other databases, unpublished tables, checkpoints). Confirm that position, as
        Postgres' own apply worker does, so the slot releases that WAL and ``lag_bytes``
        reads 0 when nothing is pending. Every complete transaction was written before
        this point (``_finish`` returns only once the sink has it, and the pipeline of
        submitted writes has just been drained: with any still in flight, nothing here)."""
        end = idle_ack_position(
            self.server_wal_end, self.last_acked_lsn,
            busy=bool(assembler.in_transaction or self.sink_retrying or self._in_flight
                      or self._big is not None))
        if end is None:
            return
        cur.send_feedback(write_lsn=end, flush_lsn=end, apply_lsn=end)
        self.last_acked_lsn = end

    def _heartbeat(self, cur: Any) -> None:
        """Keep the walsender satisfied while the loop is busy (e.g. a sink retrying), and
        ask the server for a reply so a silent peer shows up in the watchdog."""
        while True:
            gevent.sleep(self.heartbeat_interval)
            try:
                cur.send_feedback(reply=True, force=True)
            except psycopg2.Error:
                return  # the reader notices on its next read

    def _set_connected(self) -> None:
        self._streamed = True
        if not self.connected:
            away = "" if self._lost_at is None else \
                f"Postgres {self.name} is back after {time.monotonic() - self._lost_at:.1f} s; "
            self._lost_at = None
            self.log.info("{}streaming slot {} (publication {})", away, self.slot,
                          self.publication)
        self.connected = True
        self.last_error = None if not self.sink_retrying else self.last_error
        self._connected_event.set()

    def _set_disconnected(self) -> None:
        self.connected = False
        self._connected_event.clear()

