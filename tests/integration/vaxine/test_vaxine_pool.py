"""Shared pool under contention and connection loss: nothing lost, nothing applied twice."""

import random
from collections import Counter
from datetime import UTC, datetime

import gevent
import pytest

from electric.changes import NewRecord, Transaction
from electric.retry import Policy, retry
from electric.vaxine import rows
from electric.vaxine.antidote import VaxineError
from electric.vaxine.pool import AntidoteConnection, PoolTimeout, VaxinePool
from electric.vaxine.stream import WalStream

WRITERS = 12
PER_WRITER = 10


def pk(_rel):
    return ["id"]


def test_more_writers_than_connections_with_connections_killed(vaxine, monkeypatch):
    pool = VaxinePool("127.0.0.1", vaxine.api_port, size=3, checkout_timeout_s=30)
    rng = random.Random(7)
    kills = Counter()
    real_request = AntidoteConnection.request_body

    def flaky_request(self, body):
        # Kill the connection just before some writes (static update 122): the request
        # never arrives, the writer retries the whole transaction on a new connection.
        if body[0] in (118, 122) and rng.random() < 0.15:
            kills["killed"] += 1
            self.sock.close()
        return real_request(self, body)

    monkeypatch.setattr(AntidoteConnection, "request_body", flaky_request)

    def writer(w):
        for i in range(PER_WRITER):
            t = Transaction([NewRecord(("public", "t"), {"id": f"{w}-{i}", "v": "x"})],
                            datetime.now(UTC), origin=f"w{w}", publication="")
            # As the writers do: the whole transaction again after a Vaxine failure.
            retry(lambda t=t: rows.write_transaction(pool, t, pk),
                  Policy(0.001, 1.0, jitter=0.2, total=20), retry_on=VaxineError)

    gevent.joinall([gevent.spawn(writer, w) for w in range(WRITERS)], raise_error=True)
    assert kills["killed"] > 0
    assert pool.opened > pool.size  # broken connections were replaced
    stream = WalStream("127.0.0.1", vaxine.replication_port, 0)
    ids = [tx.changes[0].record["id"] for tx, _ in
           (stream.get(timeout=5) for _ in range(WRITERS * PER_WRITER))]
    with pytest.raises(gevent.queue.Empty):
        stream.get(timeout=0.2)
    stream.close()
    assert sorted(ids) == sorted(f"{w}-{i}" for w in range(WRITERS) for i in range(PER_WRITER))
    assert vaxine.store.active_count() == 0  # killed connections' transactions were aborted
    pool.close()


def test_idle_connection_closed_by_server_is_replaced_silently(vaxine, pool):
    t = Transaction([NewRecord(("public", "t"), {"id": "1"})], datetime.now(UTC))
    rows.write_transaction(pool, t, pk)
    opened = pool.opened
    for sock in list(vaxine._connections):
        sock.shutdown(2)
    gevent.sleep(0.05)
    rows.write_transaction(pool, t, pk)
    assert pool.opened == opened + 1


def test_checkout_timeout_and_connect_failure(vaxine):
    pool = VaxinePool("127.0.0.1", vaxine.api_port, size=1, checkout_timeout_s=0.1)
    with pool.connection():
        with pytest.raises(PoolTimeout):
            with pool.connection():
                pass
    pool.close()
    dead = VaxinePool("127.0.0.1", 1, size=1, connect_timeout_ms=200)
    with pytest.raises(VaxineError):
        with dead.connection():
            pass
    # the slot was released: a second attempt fails the same way rather than timing out
    with pytest.raises(VaxineError) as info:
        with dead.connection():
            pass
    assert not isinstance(info.value, PoolTimeout)


def test_failure_inside_transaction_aborts(vaxine, pool):
    with pytest.raises(RuntimeError):
        with pool.transaction():
            assert vaxine.store.active_count() == 1
            raise RuntimeError("boom")
    assert vaxine.store.active_count() == 0
