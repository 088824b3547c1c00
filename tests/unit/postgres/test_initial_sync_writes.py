"""The initial copy's pipelined writes (electric/postgres/initial_sync.py ``_Writes``)."""

import pytest
from gevent.event import AsyncResult

from electric.changes import Transaction, utc_now
from electric.postgres import initial_sync


def tx(n: int) -> Transaction:
    return Transaction([], utc_now(), lsn=n)


def test_without_submit_each_batch_is_written_before_the_next():
    written = []
    writes = initial_sync._Writes(written.append, None)
    writes(tx(1))
    assert written and written[0].lsn == 1
    writes.drain()


def test_at_most_in_flight_batches_wait_and_drain_waits_for_all():
    results: list[AsyncResult] = []

    def submit(t: Transaction) -> AsyncResult:
        r = AsyncResult()
        results.append(r)
        return r

    def must_not_write(_t: Transaction) -> None:
        raise AssertionError("with submit, write is not used")

    writes = initial_sync._Writes(must_not_write, submit)
    for n in range(initial_sync.IN_FLIGHT):
        writes(tx(n))  # returns at once: nothing durable yet
    assert len(writes.pending) == initial_sync.IN_FLIGHT
    results[0].set(1)
    writes(tx(99))  # one more than allowed: waits for (and consumes) the oldest
    assert len(writes.pending) == initial_sync.IN_FLIGHT
    for r in results[1:]:
        r.set(1)
    writes.drain()
    assert not writes.pending


def test_a_failed_write_fails_the_copy():
    failed = AsyncResult()
    failed.set_exception(RuntimeError("disk full"))
    writes = initial_sync._Writes(lambda _t: None, lambda _t: failed)
    writes(tx(1))
    with pytest.raises(RuntimeError, match="disk full"):
        writes.drain()
