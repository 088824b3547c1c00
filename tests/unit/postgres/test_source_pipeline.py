"""The source reader's sans-I/O decisions: acknowledgement order, idle position, options."""

from __future__ import annotations

from datetime import UTC, datetime

from gevent.event import AsyncResult

from electric.changes import NewRecord, Transaction
from electric.postgres.lsn import Lsn
from electric.postgres.source_pipeline import (
    InFlight,
    WriteRetry,
    durable_prefix,
    idle_ack_position,
    publication_option,
    relations,
    stream_options,
)

TS = datetime(2022, 11, 23, 10, 0, 0, tzinfo=UTC)


def tx(end: int, *tables: str) -> Transaction:
    changes = [NewRecord(relation=("public", t), record={"id": "1"}) for t in tables]
    return Transaction(changes=changes, commit_timestamp=TS, origin="pg_1",
                       publication="p", lsn=Lsn(end))


def settled(ok: bool) -> AsyncResult:
    result = AsyncResult()
    if ok:
        result.set(None)
    else:
        result.set_exception(RuntimeError("refused"))
    return result


def test_in_flight_keeps_commit_order_and_says_when_full():
    pipe = InFlight(limit=2)
    assert not pipe and len(pipe) == 0 and not pipe.full
    first = tx(10, "a")
    pipe.add(Lsn(10), first, settled(True))
    pipe.add(Lsn(20))  # nothing to write: acknowledged in its turn
    assert pipe.full and len(pipe) == 2
    assert pipe.head()[0] == Lsn(10) and pipe.head()[1] is first
    assert pipe.pop()[0] == Lsn(10)
    assert [e[0] for e in pipe.take_all()] == [Lsn(20)]
    assert not pipe


def test_durable_prefix_stops_at_the_first_failure():
    entries = [
        (Lsn(10), tx(10, "a"), settled(True)),
        (Lsn(20), None, None),  # nothing written: not a delivery
        (Lsn(30), tx(30, "a"), settled(True)),
        (Lsn(40), tx(40, "a"), settled(False)),
        (Lsn(50), tx(50, "a"), settled(True)),  # after the failure: never counted
    ]
    assert durable_prefix(entries) == [Lsn(10), Lsn(30)]
    assert durable_prefix(entries[3:]) == []
    assert durable_prefix([]) == []


def test_idle_position_is_confirmed_only_when_nothing_is_pending_and_it_moves_on():
    assert idle_ack_position(Lsn(100), Lsn(50), busy=False) == Lsn(100)
    assert idle_ack_position(Lsn(100), None, busy=False) == Lsn(100)
    assert idle_ack_position(Lsn(100), Lsn(50), busy=True) is None
    assert idle_ack_position(Lsn(100), Lsn(100), busy=False) is None
    assert idle_ack_position(None, Lsn(50), busy=False) is None


def test_publication_option_quotes_only_when_needed():
    assert publication_option("all_tables") == "all_tables"
    assert publication_option("a, b") == "a,b"
    assert publication_option('My"Pub') == '"My""Pub"'


def test_origin_none_asked_from_postgres_16_on():
    assert "origin" not in stream_options("all_tables", 150004, True)
    assert stream_options("all_tables", 160002, True)["origin"] == "none"
    assert stream_options("all_tables", 180006, True)["origin"] == "none"
    # a narrower drop_origin predicate needs every origin's changes to reach it
    assert "origin" not in stream_options("all_tables", 180006, False)


def test_relations_names_a_few_tables_then_counts():
    assert relations(tx(1, "b", "a", "b")) == "public.a, public.b"
    many = tx(1, *"abcdefg")
    assert relations(many) == "public.a, public.b, public.c, public.d, public.e and 2 more"


def test_write_retry_outage_is_quick_and_logged_sparsely():
    retry = WriteRetry(0.05, 0.2, 30.0)
    delays = [retry.failed(permanent=False) for _ in range(4)]
    assert delays == [0.05, 0.1, 0.2, 0.2] and retry.attempts == 4
    logged = []
    for _ in range(16):
        retry.failed(permanent=False)
        logged.append(retry.worth_logging)
    # attempts 5..20: only the tenth and the twentieth are logged
    assert [n for n, yes in zip(range(5, 21), logged, strict=True) if yes] == [10, 20]


def test_write_retry_blocked_starts_near_a_second_and_is_capped():
    retry = WriteRetry(0.05, 5.0, 30.0)
    delays = [retry.failed(permanent=True) for _ in range(7)]
    assert delays[0] == 1.0 and max(delays) == 30.0 and delays == sorted(delays)
    short = WriteRetry(0.05, 5.0, 0.5)  # a cap below a second is the start too
    assert short.failed(permanent=True) == 0.5
