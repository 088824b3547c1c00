"""The schema registry (electric/schema.py): tables learnt per publication, Electric's own
stable relation ids, lookups by name and by id, lookups that wait for a table to be learnt,
readiness and migration history.

Waiting lookups run in greenlets; ``gevent.idle()`` runs every runnable greenlet until all
of them block, so "the waiter is now waiting" is a fact, not a guess about timing.
"""

from __future__ import annotations

from datetime import UTC, datetime

import gevent
import pytest

from electric.changes import Column, Table
from electric.schema import FIRST_RELATION_ID, Migration, SchemaRegistry

# Far longer than any test runs: a waiter that returns did so because of a put, not a timeout.
FOREVER = 60.0


def table(schema: str, name: str, *columns: str, oid: int = 16384) -> Table:
    """A table keyed by its first column (``id`` when none are given)."""
    columns = columns or ("id",)
    cols = tuple(Column(c, "text", part_of_identity=(i == 0)) for i, c in enumerate(columns))
    return Table(schema, name, oid, cols, (columns[0],))


def waiting(fn, *args, **kwargs) -> gevent.Greenlet:
    """``fn(*args)`` in a greenlet that has run up to the point where it blocks."""
    greenlet = gevent.spawn(fn, *args, **kwargs)
    gevent.idle()
    return greenlet


@pytest.fixture
def registry():
    return SchemaRegistry()


# -- learning tables -------------------------------------------------------------------


def test_tables_get_electrics_own_ids_in_the_order_they_are_learnt(registry):
    learnt = registry.put_tables("pub", [table("public", "a", oid=99), table("public", "b")])
    assert [(t.name, t.oid) for t in learnt] == [("a", FIRST_RELATION_ID),
                                                ("b", FIRST_RELATION_ID + 1)]
    # the id the source Postgres gave is not kept anywhere
    assert registry.table(("public", "a")).oid == FIRST_RELATION_ID
    assert registry.table_by_id(99) is None


def test_the_same_table_from_another_publication_keeps_its_id(registry):
    [first] = registry.put_tables("pub_one", [table("public", "a", oid=1)])
    [again] = registry.put_tables("pub_two", [table("public", "a", oid=2)])
    assert again.oid == first.oid == FIRST_RELATION_ID
    assert [t.oid for t in registry.publication_tables("pub_one")] == [first.oid]
    assert [t.oid for t in registry.publication_tables("pub_two")] == [first.oid]
    assert len(registry.tables()) == 1


def test_a_new_layout_replaces_the_old_one_under_the_same_id(registry):
    registry.put_tables("pub", [table("s", "t", "id", "title")])
    [relearnt] = registry.put_tables("pub", [table("s", "t", "id", "title", "body")])
    assert relearnt.oid == FIRST_RELATION_ID
    assert registry.table(("s", "t")).column_names() == ["id", "title", "body"]
    assert registry.table_by_id(FIRST_RELATION_ID).column_names() == ["id", "title", "body"]
    assert registry.publication_tables("pub") == [relearnt]
    assert registry.tables() == [relearnt]


def test_a_relation_may_be_given_as_a_list(registry):
    registry.put_tables("pub", [table("s", "t")])
    assert registry.table(["s", "t"]).relation == ("s", "t")


def test_same_name_in_two_schemas_are_two_tables(registry):
    registry.put_tables("pub", [table("one", "t"), table("two", "t")])
    assert registry.table(("one", "t")).oid != registry.table(("two", "t")).oid
    assert registry.table_by_id(FIRST_RELATION_ID + 1).relation == ("two", "t")


def test_publication_tables_keep_the_order_first_learnt(registry):
    registry.put_tables("pub", [table("s", "b"), table("s", "a")])
    registry.put_tables("pub", [table("s", "a"), table("s", "c")])
    assert [t.name for t in registry.publication_tables("pub")] == ["b", "a", "c"]


# -- unknown tables --------------------------------------------------------------------


def test_unknown_tables_ids_and_publications_are_none(registry):
    registry.put_tables("pub", [table("s", "t")])
    assert registry.table(("s", "other")) is None
    assert registry.table(("other", "t")) is None
    assert registry.table_by_id(FIRST_RELATION_ID + 1) is None
    assert registry.table_by_id(0) is None
    assert registry.publication_tables("other_pub") is None


def test_an_empty_publication_is_known_and_empty(registry):
    registry.put_tables("pub", [])
    assert registry.publication_tables("pub") == []
    assert registry.publication_tables("other") is None


def test_a_lookup_with_a_timeout_gives_none_when_nothing_comes(registry):
    assert registry.table(("s", "t"), wait=0.01) is None
    assert registry.table_by_id(FIRST_RELATION_ID, wait=0.01) is None
    assert registry.publication_tables("pub", wait=0.01) is None


# -- waiting lookups -------------------------------------------------------------------


def test_a_waiting_lookup_by_name_returns_the_table_once_it_is_learnt(registry):
    waiter = waiting(registry.table, ("s", "t"), wait=FOREVER)
    assert not waiter.ready()
    registry.put_tables("pub", [table("s", "t")])
    assert waiter.get(timeout=FOREVER).relation == ("s", "t")


def test_a_waiting_lookup_is_not_answered_by_another_table_or_readiness(registry):
    waiter = waiting(registry.table, ("s", "t"), wait=FOREVER)
    registry.put_tables("pub", [table("s", "other")])
    registry.set_ready("origin")
    gevent.idle()
    assert not waiter.ready()
    registry.put_tables("pub", [table("s", "t")])
    assert waiter.get(timeout=FOREVER).name == "t"


def test_a_waiting_lookup_by_id_returns_the_table_that_gets_that_id(registry):
    waiter = waiting(registry.table_by_id, FIRST_RELATION_ID + 1, wait=FOREVER)
    registry.put_tables("pub", [table("s", "first")])
    gevent.idle()
    assert not waiter.ready()
    registry.put_tables("pub", [table("s", "second")])
    assert waiter.get(timeout=FOREVER).name == "second"


def test_a_waiting_publication_lookup_and_many_waiters(registry):
    waiters = [waiting(registry.publication_tables, "pub", wait=FOREVER) for _ in range(3)]
    assert not any(w.ready() for w in waiters)
    registry.put_tables("pub", [table("s", "t")])
    assert [[t.name for t in w.get(timeout=FOREVER)] for w in waiters] == [["t"]] * 3


def test_a_lookup_of_a_known_table_does_not_wait(registry):
    registry.put_tables("pub", [table("s", "t")])
    # answered inside this greenlet, without a switch: nothing else could have run
    assert registry.table(("s", "t"), wait=FOREVER).name == "t"


def test_next_change_is_set_by_the_next_put_or_readiness_only(registry):
    before = registry.next_change()
    assert not before.is_set()
    registry.put_tables("pub", [table("s", "t")])
    assert before.is_set()
    after = registry.next_change()
    assert after is not before and not after.is_set()
    registry.put_migrations("origin", [])  # history is not a table change
    assert not after.is_set()
    registry.set_ready("origin")
    assert after.is_set()


# -- readiness and migrations ----------------------------------------------------------


def test_readiness_is_per_origin_and_false_until_said(registry):
    assert not registry.is_ready("a")
    registry.set_ready("a")
    assert registry.is_ready("a") and not registry.is_ready("b")
    registry.set_ready("a", False)
    assert not registry.is_ready("a")


def test_migration_history_is_per_origin_and_a_copy(registry):
    history = [Migration("2", "h2", datetime(2024, 1, 2, tzinfo=UTC)), Migration("1", "h1", None)]
    assert registry.migrations("a") is None
    registry.put_migrations("a", history)
    history.append(Migration("3", "h3", None))
    assert [m.vsn for m in registry.migrations("a")] == ["2", "1"]
    assert registry.migrations("b") is None
