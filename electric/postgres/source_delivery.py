"""The writing half of a source reader: each transaction durable before it is acknowledged.

:class:`Delivery` is the part of :class:`~electric.postgres.source.SourceReader` (which
inherits it and owns the state it uses) that takes each committed transaction from the
reading loop: written synchronously (``sink``, retried until it is durable, a permanent
refusal blocking ingestion with one ERROR), pipelined (``submit``: the reader keeps reading
while earlier transactions commit, acknowledgements following in commit order), or, for a
large one, written into the store while it is read (``begin_big``). Acknowledgements go to
the slot through the cursor only after durability (docs/architecture.md §3). The decisions
(acknowledgement order, retry delays) are in the sans-I/O ``source_pipeline.py``.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent import GreenletExit

from electric.changes import Transaction
from electric.errors import describe, is_permanent
from electric.postgres.assembler import Committed
from electric.postgres.lsn import Lsn
from electric.postgres.source_pipeline import StreamLost, WriteRetry, durable_prefix, relations


class Delivery:
    """Mixed into ``SourceReader``: the transaction-writing and acknowledging methods."""

    def _finish(self, cur: Any, committed: Committed) -> None:
        end = committed.end_lsn
        if committed.streamed:
            self._finish_big(cur, committed)
            return
        pipelined = self.submit is not None and self.blocked_lsn is None
        if self._in_flight or (pipelined and committed.needs_write):
            self._pipeline(cur, committed)
            return
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

    # -- big transactions: written into the store while they are read ------------------------

    def _spill(self, changes: list) -> None:
        if self._big is None:
            if self._in_flight:  # everything before it must be durable first (order)
                self._drain(self._cur, wait_all=True)
            self._big = self.begin_big()
            self.log.info("a large transaction is being written while it is read")
        try:
            self._big.add(changes)
        except Exception as exc:
            self._big_failed(exc)

    def _finish_big(self, cur: Any, committed: Committed) -> None:
        end = committed.end_lsn
        big, self._big = self._big, None
        if big is None:
            raise StreamLost(f"transaction {end}: streamed changes missing")  # read it again
        if self._delivered_lsn is not None and end <= self._delivered_lsn:
            big.abort()  # read again after a reconnect, but already durable
            self._ack(cur, end, written=False)
            return
        tx = committed.transaction
        try:
            if tx.changes:
                big.add(tx.changes)
            big.commit(tx.origin, tx.publication)
        except Exception as exc:
            self._big = big
            self._big_failed(exc, end)
        if self.blocked_lsn is not None:
            self.blocked_lsn = None
            self.last_error = None
        self.log.info("large transaction {} written ({} changes)", end, big.changes)
        self._delivered(cur, end)

    def _big_failed(self, exc: Exception, end: Lsn | None = None) -> None:
        """A big transaction could not be written: nothing of it is stored. Read it again
        from the slot (reconnect with back-off), reporting a permanent refusal like a
        blocked transaction."""
        big, self._big = self._big, None
        if big is not None:
            try:
                big.abort()
            except Exception as abort_exc:  # the store is failing anyway: report, go on
                self.log.warning("aborting the large transaction failed: {}", abort_exc)
        what = f"large transaction {end}" if end is not None else "a large transaction"
        self.last_error = f"{what} cannot be written: {describe(exc)}"
        if is_permanent(exc):
            self.blocked_lsn = end or self.blocked_lsn or self.last_acked_lsn
            self.log.error("{}; ingestion from this source is held at it (not "
                           "acknowledged; read again and retried)", self.last_error)
        raise StreamLost(self.last_error) from exc

    # -- pipelined writing: keep reading while earlier transactions commit ----------------

    def _pipeline(self, cur: Any, committed: Committed) -> None:
        """Submit ``committed`` behind the transactions in flight; acknowledgements follow
        in commit order, each only once its transaction (and all before it) is durable."""
        end = committed.end_lsn
        if not committed.needs_write or (self._delivered_lsn is not None
                                         and end <= self._delivered_lsn):
            if committed.skipped:
                self.log.debug("dropping transaction {} ({})", end, committed.skipped)
            self._in_flight.add(end)
        else:
            tx = committed.transaction
            self._in_flight.add(end, tx, self.submit(tx))
        self._drain(cur, wait_all=self._in_flight.full)

    def _drain(self, cur: Any, wait_all: bool) -> None:
        """Acknowledge the durable head of the pipeline (with ``wait_all``, wait for the
        whole pipeline). A failed write is written again synchronously (``_write``: retries,
        blocked reporting), then every later one that the failure kept out."""
        while self._in_flight:
            end, tx, result = self._in_flight.head()
            if result is not None and not result.ready():
                if not wait_all:
                    return
                result.wait()
            self._in_flight.pop()
            if tx is None:
                self._ack(cur, end, written=False)
            elif result.successful():
                self._delivered(cur, end)
            else:
                self._recover(cur, end, tx, result)

    def _recover(self, cur: Any, end: Lsn, tx: Transaction, result: Any) -> None:
        self.log.debug("pipelined write of {} failed ({}); writing it again",
                       end, result.exception)
        rest = self._in_flight.take_all()
        for _end, _tx, later in rest:  # let everything submitted settle first
            if later is not None:
                later.wait()
        self._write(tx)
        self._delivered(cur, end)
        for later_end, later_tx, later in rest:
            if later_tx is None:
                self._ack(cur, later_end, written=False)
                continue
            if not later.successful():
                self._write(later_tx)
            self._delivered(cur, later_end)
        reset = getattr(self.submit, "reset", None)
        if reset is not None:
            reset()

    def _delivered(self, cur: Any, end: Lsn) -> None:
        self._delivered_lsn = end
        self.transactions_written += 1
        self._ack(cur, end, written=True)
        self.reconnect.reset()

    def _ack(self, cur: Any, end: Lsn, written: bool) -> None:
        cur.send_feedback(write_lsn=end, flush_lsn=end, apply_lsn=end, force=written)
        self.last_acked_lsn = end
        self.transactions_acked += 1

    def _settle_in_flight(self) -> None:
        """The stream is gone: wait for what was submitted and remember what became durable
        (in order, up to the first failure) so it is not written twice after reconnecting;
        the rest is read again from the slot."""
        in_flight = self._in_flight.take_all()
        for _end, _tx, result in in_flight:  # all settled before the chain is reset
            if result is not None:
                result.wait()
        for end in durable_prefix(in_flight):  # the rest was refused: read again
            self._delivered_lsn = end
            self.transactions_written += 1
        reset = getattr(self.submit, "reset", None)
        if reset is not None:
            reset()

    def _write(self, tx: Transaction) -> None:
        """Hand ``tx`` to the sink until it succeeds (capped back-off, never gives up).

        A permanent error (``errors.is_permanent``: e.g. the row mapping refusing a row) is not an outage and
        will not heal by itself; the transaction is still never skipped (acknowledging it
        would lose it), but it is reported once at error level, exposed as ``blocked_lsn``
        in the status, and retried with a back-off capped at ``sink_blocked_retry`` seconds.
        """
        retry = WriteRetry(self.sink_retry_min, self.sink_retry_max, self.sink_blocked_retry)
        while True:
            try:
                self.sink(tx)
            except GreenletExit:
                raise
            except Exception as exc:  # the sink's failure modes are its own business
                permanent = is_permanent(exc)
                delay = retry.failed(permanent)
                self.sink_retrying = True
                self.last_error = f"write failed: {describe(exc)}"
                if permanent:
                    if self.blocked_lsn != tx.lsn:
                        self.blocked_lsn = tx.lsn
                        self.log.error(
                            "transaction {} (relations {}) cannot be written: {}; ingestion "
                            "from this source is held at it (not acknowledged; retried, at "
                            "most every {:.0f}s) until the cause is fixed",
                            tx.lsn,
                            relations(tx),
                            describe(exc),
                            self.sink_blocked_retry,
                        )
                    self.last_error = f"transaction {tx.lsn} cannot be written: {describe(exc)}"
                    gevent.sleep(delay)
                    continue
                if retry.worth_logging:
                    self.log.warning(
                        "could not write transaction {} ({}); attempt {}, retrying in {:.2f}s",
                        tx.lsn,
                        describe(exc),
                        retry.attempts,
                        delay,
                    )
                gevent.sleep(delay)
                continue
            if retry.attempts:
                self.log.info("transaction {} written after {} retries", tx.lsn,
                              retry.attempts)
                self.last_error = None
            self.blocked_lsn = None
            self.sink_retrying = False
            return
