"""Client transactions → the log → the offset file → the acknowledgement: the incoming
half of a Satellite connection (a mixin of :class:`~electric.satellite.connection.Connection`).

One writer greenlet per socket takes the transactions the session completed, in order:
waits a little for the schema registry to learn their tables, judges them on the stored
rows under sync rules, writes each as one log transaction (retrying transient failures),
fsyncs the client's lsn in the offset file, and only then lets the session acknowledge it
(``SatPingResp{lsn}``): an ack promises durability. A write that keeps failing pauses
incoming replication; the client re-sends from its last acknowledged lsn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.queue

from electric.changes import DeletedRecord, Transaction
from electric.retry import Policy, retry
from electric.satellite.lsn import describe


@dataclass
class Write:
    generation: int
    transaction: Transaction


class ClientWriter:
    """Needs from the connection: ``server`` (limits, lookup_table, current_rows,
    write_transaction, is_permanent, offsets), ``session``, ``lock``, ``log``,
    ``greenlets``, ``client_id``, ``writes``, ``write_generation``, ``writer``,
    ``_handle``, ``_execute`` and ``_run_actions``."""

    server: Any
    session: Any
    lock: Any
    log: Any
    greenlets: list
    client_id: str | None
    writes: gevent.queue.Queue | None
    write_generation: int
    writer: gevent.Greenlet | None

    def _writer_queue(self) -> gevent.queue.Queue:
        if self.writes is None:
            self.writes = gevent.queue.Queue(self.server.limits.writer_queue)
            self.writer = gevent.spawn(self._writer)
            self.greenlets.append(self.writer)
        return self.writes

    def _writer(self) -> None:
        while True:
            item: Write = self.writes.get()
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
                gevent.sleep(self.server.limits.table_retry_first)
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
