"""The source reader: one logical replication stream from a source Postgres into a sink.

One :class:`SourceReader` per connector runs in its own greenlet. It follows the measured
recipe for psycopg2 under gevent (``psycopg2-gevent.md``): an async
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
"""

from __future__ import annotations

import re
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
from electric.postgres import green, provision
from electric.postgres import pgoutput as po
from electric.postgres.assembler import Committed, TableLookup, TransactionAssembler
from electric.postgres.lsn import Lsn

Sink = Callable[[Transaction], None]

# How long the loop may drain a backlog before letting other greenlets run.
_YIELD_EVERY = 0.005


class StreamLost(Exception):
    """The replication stream stopped answering (watchdog) — reconnect."""


def _stream_options(publication: str, server_version: int, drop_all_origins: bool) -> dict:
    """pgoutput options. From Postgres 16 on, ``origin 'none'`` makes the server leave out
    what a subscription applied (Electric's own echo) before it is sent; the assembler's
    Origin check still drops it on 15 (and stays as a guard on 16+)."""
    options = {"proto_version": "1", "publication_names": _publication_option(publication)}
    if drop_all_origins and server_version >= 160000:
        options["origin"] = "none"
    return options


def _publication_option(names: str) -> str:
    """pgoutput parses ``publication_names`` as an identifier list: quote when needed."""
    parts = []
    for name in names.split(","):
        name = name.strip()
        if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
            parts.append(name)
        else:
            parts.append('"' + name.replace('"', '""') + '"')
    return ",".join(parts)


class Backoff:
    """Capped exponential back-off: min, 2·min, 4·min, … max, max, …"""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.current = minimum

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.minimum


class SourceReader:
    """Streams a slot, hands durable-required transactions to ``sink``, acknowledges them."""

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        slot: str,
        publication: str,
        sink: Sink,
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
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.sink = sink
        self.table_lookup = table_lookup
        self.refresh_table = refresh_table
        self.encoding = encoding
        self.drop_origin = drop_origin
        self.status_interval = max(1.0, status_interval)  # psycopg2 rejects < 1
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.reconnect = Backoff(reconnect_min, reconnect_max)
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
        self.server_wal_end: Lsn | None = None  # from keepalives / XLogData headers

        self._delivered_lsn: Lsn | None = None
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
        """WAL the server has produced past our last acknowledgement (as last reported)."""
        if self.server_wal_end is None or self.last_acked_lsn is None:
            return None
        return max(0, int(self.server_wal_end) - int(self.last_acked_lsn))

    def run(self) -> None:
        """Stream until stopped, reconnecting after failures. Runs in its own greenlet."""
        while not self._stopping:
            started = time.monotonic()
            try:
                self._stream()
            except GreenletExit:
                raise
            except (psycopg2.Error, po.ProtocolError, StreamLost, OSError) as exc:
                self._set_disconnected()
                self.last_error = _describe(exc)
                if self._stopping:
                    break
                # A stream that ran a while is a fresh failure: start again from the minimum.
                if time.monotonic() - started > self.reconnect.maximum:
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
                    repaired = self._recreate_missing()
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
                    taken = self._take_over_slot()
                    self.log.info(
                        "slot {} still held by an old connection{}; retrying in {:.1f}s",
                        self.slot,
                        " (terminated it)" if taken else "",
                        delay,
                    )
                else:
                    self.log.warning(
                        "replication connection lost: {}; reconnecting in {:.1f}s",
                        self.last_error,
                        delay,
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

    def _plain_connection(self) -> Any:
        params = ext.parse_dsn(self.dsn)
        params.pop("replication", None)
        conn = green.connect(ext.make_dsn(**params))
        conn.autocommit = True
        return conn

    def _recreate_missing(self) -> str:
        """Recreate a dropped slot / publication; names what was recreated ("" if none)."""
        try:
            conn = self._plain_connection()
        except psycopg2.Error:
            return ""
        try:
            made = []
            if provision.ensure_publication(conn, self.publication):
                made.append(f"publication {self.publication}")
            if provision.ensure_slot(conn, self.slot):
                made.append(f"slot {self.slot}")
            return " and ".join(made)
        except (psycopg2.Error, provision.ProvisionError) as exc:
            self.log.warning("could not recreate slot/publication: {}", _describe(exc))
            return ""
        finally:
            conn.close()

    def _take_over_slot(self) -> bool:
        """Terminate the walsender holding our slot if it is a stale stream of ours.

        Only a backend with our own application_name that has not sent a status update for
        three heartbeats is terminated: a live stream (e.g. a second Electric misconfigured
        with the same connector) or another client is left alone.
        """
        try:
            conn = self._plain_connection()
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_catalog.pg_terminate_backend(s.active_pid) "
                    "FROM pg_catalog.pg_replication_slots s "
                    "JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid "
                    "WHERE s.slot_name = %s AND r.application_name = %s "
                    "AND COALESCE(r.reply_time, r.backend_start) "
                    "    < pg_catalog.now() - pg_catalog.make_interval(secs => %s)",
                    (self.slot, self.application_name, 3 * self.heartbeat_interval),
                )
                return any(row[0] for row in cur.fetchall())
        except psycopg2.Error:
            return False
        finally:
            conn.close()

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
                options=_stream_options(self.publication, conn.server_version,
                                        self.drop_origin is None),
            )
            green.wait_callback(conn)  # cooperative wait for CopyBoth
            self._set_connected()
            heartbeat = gevent.spawn(self._heartbeat, cur)
            self._consume(conn, cur)
        finally:
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
        )
        fd = conn.fileno()
        last_yield = time.monotonic()
        last_io = cur.io_timestamp
        last_activity = time.monotonic()
        while True:
            msg = green.without_callback(cur.read_message)
            self._last_read = time.monotonic()
            if cur.wal_end:
                self.server_wal_end = Lsn(cur.wal_end)
            if msg is None:
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
            committed = assembler.feed(po.decode(msg.payload))
            if committed is not None:
                self._finish(cur, committed)
            last_activity = time.monotonic()
            if last_activity - last_yield > _YIELD_EVERY:
                gevent.idle()  # NOT sleep(0): that starves timers and I/O (see the report)
                last_yield = time.monotonic()

    def _finish(self, cur: Any, committed: Committed) -> None:
        end = committed.end_lsn
        written = False
        if committed.needs_write:
            if self._delivered_lsn is not None and end <= self._delivered_lsn:
                self.log.debug("transaction {} already written; acknowledging again", end)
            else:
                self._write(committed.transaction)
                self._delivered_lsn = end
                self.transactions_written += 1
                written = True
        elif committed.skipped:
            self.log.debug("dropping transaction {} ({})", end, committed.skipped)
        # A written transaction is acknowledged at once so the slot moves promptly; others go
        # out with psycopg2's next periodic status update (within status_interval).
        cur.send_feedback(write_lsn=end, flush_lsn=end, apply_lsn=end, force=written)
        self.last_acked_lsn = end
        self.transactions_acked += 1
        if written:
            self.reconnect.reset()

    def _write(self, tx: Transaction) -> None:
        """Hand ``tx`` to the sink until it succeeds (capped back-off, never gives up).

        A ``ValueError`` (e.g. the Vaxine row mapping refusing a row) is not an outage and
        will not heal by itself; the transaction is still never skipped (acknowledging it
        would lose it), but it is reported once at error level, exposed as ``blocked_lsn``
        in the status, and retried with a back-off capped at ``sink_blocked_retry`` seconds.
        """
        backoff = Backoff(self.sink_retry_min, self.sink_retry_max)
        # Slower, but starting at about a second: a refusal that depends on state elsewhere
        # (e.g. a table the schema registry does not know yet) may still clear quickly.
        blocked_backoff = Backoff(min(1.0, self.sink_blocked_retry), self.sink_blocked_retry)
        attempts = 0
        while True:
            try:
                self.sink(tx)
            except GreenletExit:
                raise
            except Exception as exc:  # the sink's failure modes are its own business
                attempts += 1
                self.sink_retrying = True
                self.last_error = f"write failed: {_describe(exc)}"
                if isinstance(exc, ValueError):
                    if self.blocked_lsn != tx.lsn:
                        self.blocked_lsn = tx.lsn
                        self.log.error(
                            "transaction {} (relations {}) cannot be written: {}; ingestion "
                            "from this source is held at it (not acknowledged; retried, at "
                            "most every {:.0f}s) until the cause is fixed",
                            tx.lsn,
                            _relations(tx),
                            _describe(exc),
                            self.sink_blocked_retry,
                        )
                    self.last_error = f"transaction {tx.lsn} cannot be written: {_describe(exc)}"
                    gevent.sleep(blocked_backoff.next())
                    continue
                delay = backoff.next()
                if attempts <= 3 or attempts % 10 == 0:  # an outage must not flood the log
                    self.log.warning(
                        "could not write transaction {} ({}); attempt {}, retrying in {:.2f}s",
                        tx.lsn,
                        _describe(exc),
                        attempts,
                        delay,
                    )
                gevent.sleep(delay)
                continue
            if attempts:
                self.log.info("transaction {} written after {} retries", tx.lsn, attempts)
                self.last_error = None
            self.blocked_lsn = None
            self.sink_retrying = False
            return

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
        if not self.connected:
            self.log.info("streaming slot {} (publication {})", self.slot, self.publication)
        self.connected = True
        self.last_error = None if not self.sink_retrying else self.last_error
        self._connected_event.set()

    def _set_disconnected(self) -> None:
        self.connected = False
        self._connected_event.clear()


def _relations(tx: Transaction, limit: int = 5) -> str:
    names = sorted({f"{c.relation[0]}.{c.relation[1]}" for c in tx.changes})
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
