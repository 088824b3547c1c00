"""What electric/postgres/subscription.py decides without a Postgres: the conninfo a
subscriber is given to reach Electric, and how ``subscribe_when_ready`` waits for its
connector, retries, and holds (then releases) a set-up a permanent refusal stops. The
sequence ``subscribe`` runs on the subscriber (CREATE / hold / triggers / ENABLE / REFRESH /
release) needs a Postgres: tests/integration/publisher/ covers it.

``attempt`` here is a plain function standing for :func:`subscribe`; the readiness event and
the retry loop are the real ones, with the shortest back-off the policy allows."""

from __future__ import annotations

import gevent
import psycopg2
import psycopg2.extensions as ext
import pytest
from gevent.event import Event

from electric.postgres.subscription import SetupState, electric_conninfo, subscribe_when_ready
from electric.postgres.upsert import TablesMissing
from electric.retry import Policy
from tests.support.waiting import wait_until

QUICK = Policy(0.001, 0.001)


def test_conninfo_names_electrics_publisher_with_a_timeout_in_seconds():
    assert ext.parse_dsn(electric_conninfo("electric.local", 5433)) == {
        "host": "electric.local", "port": "5433", "dbname": "electric", "connect_timeout": "10"}


def test_conninfo_extras_and_values_that_need_quoting_survive():
    info = electric_conninfo("h", 1, dbname="my db", connect_timeout=3, password="it's",
                             sslmode="require")
    assert ext.parse_dsn(info) == {"host": "h", "port": "1", "dbname": "my db",
                                   "connect_timeout": "3", "password": "it's",
                                   "sslmode": "require"}


def test_a_new_set_up_is_not_held():
    assert SetupState() == SetupState(blocked=None, failures=0)


class Attempts:
    """Fails with each of ``errors`` in turn, then succeeds."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def test_nothing_is_attempted_before_the_connector_is_ready():
    ready, attempt = Event(), Attempts()
    runner = gevent.spawn(subscribe_when_ready, "sub", ready, attempt, QUICK)
    gevent.idle()
    assert attempt.calls == 0 and not runner.ready()
    ready.set()
    runner.get(timeout=10)
    assert attempt.calls == 1


def test_transient_failures_are_retried_and_counted_but_do_not_hold():
    ready, state = Event(), SetupState()
    ready.set()
    attempt = Attempts(psycopg2.OperationalError("server closed the connection"),
                       OSError("connection refused"))
    subscribe_when_ready("sub", ready, attempt, QUICK, state)
    assert attempt.calls == 3
    assert state == SetupState(blocked=None, failures=2)


def test_a_missing_table_holds_the_set_up_until_it_succeeds():
    ready, state = Event(), SetupState()
    ready.set()
    missing = TablesMissing([("public", "items")])
    seen = []

    def attempt():
        seen.append(state.blocked)
        if len(seen) <= 2:
            raise missing

    subscribe_when_ready("sub", ready, attempt, QUICK, state)
    # held from the first refusal on, and released by the success
    assert seen == [None, str(missing), str(missing)]
    assert state == SetupState(blocked=None, failures=2)


def test_the_hold_names_the_latest_refusal():
    ready, state = Event(), SetupState()
    ready.set()
    first, second = TablesMissing([("s", "a")]), TablesMissing([("s", "b")])
    seen = []

    def attempt():
        seen.append(state.blocked)
        if len(seen) == 1:
            raise first
        if len(seen) == 2:
            raise second

    subscribe_when_ready("sub", ready, attempt, QUICK, state)
    assert seen == [None, str(first), str(second)]
    assert state.blocked is None


def test_readiness_is_waited_for_again_before_a_retry():
    """The connector lost its stream after a failed attempt: the retry waits for it."""
    ready = Event()
    ready.set()
    calls = []

    def attempt():
        calls.append(ready.is_set())
        if len(calls) == 1:
            ready.clear()
            raise psycopg2.OperationalError("server closed the connection")

    runner = gevent.spawn(subscribe_when_ready, "sub", ready, attempt, QUICK)
    wait_until(lambda: ready.linkcount() > 0, what="the retry waiting for readiness")
    assert calls == [True] and not runner.ready()
    ready.set()
    runner.get(timeout=10)
    assert calls == [True, True]


def test_an_error_of_another_kind_is_raised_not_retried():
    ready = Event()
    ready.set()
    attempt = Attempts(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        subscribe_when_ready("sub", ready, attempt, QUICK)
    assert attempt.calls == 1
