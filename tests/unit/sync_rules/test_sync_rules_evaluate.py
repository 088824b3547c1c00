"""Binding rules to claims, and what a client receives and may write (docs/sync-rules.md)."""

import itertools

import pytest

from electric.changes import DeletedRecord, NewRecord, TruncatedRelation, UpdatedRecord
from electric.sync_rules import (
    Outcome,
    apply,
    apply_all,
    classify,
    effective_filter,
    first_refusal,
    may_write,
    parse,
)

ITEMS = ("public", "items")
PROJECTS = ("public", "projects")
LOOKUP = ("public", "lookup")
SECRETS = ("public", "secrets")
RULES = parse('''
[claims]
sub = "string"
teams = "string[]"
level = "integer"
admin = "boolean"

[tables.items]
rows = "owner_id = claims.sub"

[tables.projects]
rows = "team_id IN claims.teams OR owner_id = claims.sub AND level = claims.level"

[tables.lookup]
rows = "all"
write = false

[tables.flags]
rows = "on = claims.admin"

[tables.secrets]
rows = "none"
''', "rules.toml")

ALICE = effective_filter(RULES, {"sub": "alice", "teams": ["red", "blue"], "level": 3,
                                 "admin": False})
BOB = effective_filter(RULES, {"sub": "bob", "teams": ["green"], "level": 3, "admin": True})


def item(owner, id="1", **more):
    return {"id": id, "owner_id": owner, "title": "t", **more}


def test_visible_tables_are_the_named_ones_not_none_and_unnamed_ones_are_hidden():
    assert ALICE.visible_tables() == [("public", "flags"), ITEMS, LOOKUP, PROJECTS]
    assert classify(ALICE, NewRecord(SECRETS, {"id": "1"})) is Outcome.DROP
    assert classify(ALICE, NewRecord(("public", "unnamed"), {"id": "1"})) is Outcome.DROP
    assert classify(ALICE, NewRecord(("other", "items"), item("alice"))) is Outcome.DROP
    assert classify(ALICE, TruncatedRelation(SECRETS)) is Outcome.DROP
    assert classify(ALICE, TruncatedRelation(ITEMS)) is Outcome.PASS


def test_equality_membership_all():
    assert classify(ALICE, NewRecord(ITEMS, item("alice"))) is Outcome.PASS
    assert classify(ALICE, NewRecord(ITEMS, item("bob"))) is Outcome.DROP
    assert classify(ALICE, NewRecord(PROJECTS, {"team_id": "blue"})) is Outcome.PASS
    assert classify(ALICE, NewRecord(PROJECTS, {"team_id": "green"})) is Outcome.DROP
    # AND binds tighter than OR: owner and level together, or the team alone.
    assert classify(ALICE, NewRecord(PROJECTS, {"team_id": "x", "owner_id": "alice",
                                                "level": "3"})) is Outcome.PASS
    assert classify(ALICE, NewRecord(PROJECTS, {"team_id": "x", "owner_id": "alice",
                                                "level": "4"})) is Outcome.DROP
    assert classify(ALICE, NewRecord(LOOKUP, {"anything": None})) is Outcome.PASS
    # Booleans compare with Postgres' text form.
    assert classify(ALICE, NewRecord(("public", "flags"), {"on": "f"})) is Outcome.PASS
    assert classify(BOB, NewRecord(("public", "flags"), {"on": "t"})) is Outcome.PASS
    assert classify(BOB, NewRecord(("public", "flags"), {"on": "f"})) is Outcome.DROP


def test_null_and_absent_columns_match_nothing():
    assert classify(ALICE, NewRecord(ITEMS, item(None))) is Outcome.DROP
    assert classify(ALICE, NewRecord(ITEMS, {"id": "1"})) is Outcome.DROP


def test_row_moving_between_owners_leaves_one_client_and_enters_the_other():
    move = UpdatedRecord(ITEMS, item("bob"), old_record=item("alice"))
    assert classify(ALICE, move) is Outcome.AS_DELETE
    assert apply(ALICE, move) == DeletedRecord(ITEMS, item("alice"))
    assert classify(BOB, move) is Outcome.AS_INSERT
    assert apply(BOB, move) == NewRecord(ITEMS, item("bob"))
    stay = UpdatedRecord(ITEMS, item("alice", title="u"), old_record=item("alice"))
    assert apply(ALICE, stay) is stay and apply(BOB, stay) is None


def test_partial_update_keeps_unchanged_filter_columns_from_the_old_row():
    # An update that does not carry owner_id (unchanged TOAST) is judged on the old value.
    change = UpdatedRecord(ITEMS, {"id": "1", "title": "new"}, old_record=item("alice"))
    assert classify(ALICE, change) is Outcome.PASS
    assert classify(BOB, change) is Outcome.DROP
    entering = UpdatedRecord(ITEMS, {"id": "1", "owner_id": "bob"}, old_record=item("alice"))
    assert apply(BOB, entering) == NewRecord(ITEMS, item("bob"))


def test_update_without_old_row():
    change = UpdatedRecord(ITEMS, item("alice"))
    assert classify(ALICE, change) is Outcome.PASS
    # Out of scope: a delete the client ignores if it never had the row.
    assert apply(BOB, change) == DeletedRecord(ITEMS, item("alice"))


def test_update_without_old_row_leaving_scope_is_a_delete_of_its_key_only():
    # The log keeps rows after the change only: a client out of scope must not get the row.
    change = UpdatedRecord(ITEMS, item("bob", secret="s"), None)
    sent = apply(ALICE, change, keys=lambda relation: ["id"])
    assert sent == DeletedRecord(ITEMS, {"id": "1"})
    assert apply_all(ALICE, [change], lambda relation: ["id"]) == [sent]
    assert apply(BOB, change, keys=lambda relation: ["id"]) is change


def test_the_stores_prior_row_decides_old_scope_when_the_change_has_no_old_row():
    # The embedded store's log gives the row as it had it before (prior): no key-only
    # delete for rows a client never saw, an insert for a row entering its scope.
    new_row = UpdatedRecord(ITEMS, item("bob"), None, prior={})
    assert classify(ALICE, new_row) is Outcome.DROP
    assert classify(BOB, new_row) is Outcome.PASS
    others = UpdatedRecord(ITEMS, item("bob", title="u"), None, prior=item("bob"))
    assert apply(ALICE, others, keys=lambda relation: ["id"]) is None
    moved = UpdatedRecord(ITEMS, item("bob"), None, prior=item("alice"))
    assert apply(ALICE, moved, keys=lambda relation: ["id"]) == DeletedRecord(ITEMS, {"id": "1"})
    assert apply(BOB, moved) == NewRecord(ITEMS, item("bob"))
    # prior is not part of the change's identity
    assert moved == UpdatedRecord(ITEMS, item("bob"))


def test_a_client_holding_nothing_is_sent_no_deletes():
    others = UpdatedRecord(ITEMS, item("bob"), None)
    moved = UpdatedRecord(ITEMS, {"owner_id": "bob"}, item("alice"))
    gone = DeletedRecord(ITEMS, {"id": "1"})
    mine = UpdatedRecord(ITEMS, item("alice"), None)
    keys = lambda relation: ["id"]  # noqa: E731
    assert [apply(ALICE, c, keys, empty=True) for c in (others, moved, gone, mine)] == [
        None, None, None, mine]
    assert apply(ALICE, others, keys) == DeletedRecord(ITEMS, {"id": "1"})


def test_deletes():
    assert classify(ALICE, DeletedRecord(ITEMS, item("alice"))) is Outcome.PASS
    assert classify(ALICE, DeletedRecord(ITEMS, item("bob"))) is Outcome.DROP
    # Old row without the filter column (key only): sent, a no-op for a client without it.
    assert classify(ALICE, DeletedRecord(ITEMS, {"id": "1"})) is Outcome.PASS


def test_missing_and_mistyped_claims_match_nothing_and_are_reported():
    anonymous = effective_filter(RULES, {})
    assert classify(anonymous, NewRecord(ITEMS, item("alice"))) is Outcome.DROP
    assert classify(anonymous, NewRecord(LOOKUP, {"id": "1"})) is Outcome.PASS
    assert sorted(anonymous.problems) == ["claim admin is missing", "claim level is missing",
                                          "claim sub is missing", "claim teams is missing"]
    assert anonymous.summary()["claim_problems"] == 4
    wrong = effective_filter(RULES, {"sub": 7, "teams": "red", "level": "3", "admin": "yes"})
    for row in (item("7"), {"team_id": "red"}, {"owner_id": "7", "level": "3"}):
        assert classify(wrong, NewRecord(ITEMS, row)) is Outcome.DROP
        assert classify(wrong, NewRecord(PROJECTS, row)) is Outcome.DROP
    assert "claim sub is not string" in wrong.problems
    assert "claim teams is not a list" in wrong.problems
    # True is not the integer 1, and 3 is not the string "3".
    bad_elements = effective_filter(RULES, {"sub": "a", "teams": ["red", 3, None],
                                            "level": True})
    assert "claim teams: 2 element(s) not string" in bad_elements.problems
    assert "claim level is not integer" in bad_elements.problems
    assert classify(bad_elements, NewRecord(PROJECTS, {"team_id": "red"})) is Outcome.PASS
    assert classify(bad_elements, NewRecord(PROJECTS, {"team_id": "3"})) is Outcome.DROP


def test_equal_claims_give_equal_hashable_filters_whatever_the_order():
    a = effective_filter(RULES, {"sub": "carol", "teams": ["x", "y", "x"], "level": 1,
                                 "admin": True, "extra": "ignored"})
    b = effective_filter(RULES, {"admin": True, "level": 1, "teams": ["y", "x"], "sub": "carol"})
    assert a == b and hash(a) == hash(b) and len({a, b, ALICE, BOB}) == 3
    # Problems do not split otherwise equal filters.
    c = effective_filter(RULES, {"sub": "carol", "teams": ["y", "x"], "level": 1, "admin": True,
                                 "unused": 1})
    assert c == a


def test_write_rules():
    assert may_write(ALICE, NewRecord(ITEMS, item("alice"))) is None
    assert "outside this client's rules" in may_write(ALICE, NewRecord(ITEMS, item("bob")))
    assert "outside" in may_write(ALICE, NewRecord(ITEMS, item(None)))
    assert may_write(ALICE, UpdatedRecord(ITEMS, item("alice", title="x"),
                                          old_record=item("alice"))) is None
    assert "would move the row out" in may_write(
        ALICE, UpdatedRecord(ITEMS, item("bob"), old_record=item("alice")))
    assert "the row is outside" in may_write(
        ALICE, UpdatedRecord(ITEMS, item("alice"), old_record=item("bob")))
    assert "without its old row" in may_write(ALICE, UpdatedRecord(ITEMS, item("alice")))
    assert may_write(ALICE, DeletedRecord(ITEMS, item("alice"))) is None
    assert "outside" in may_write(ALICE, DeletedRecord(ITEMS, item("bob")))
    assert "outside" in may_write(ALICE, DeletedRecord(ITEMS, {"id": "1"}))
    assert "read-only" in may_write(ALICE, NewRecord(LOOKUP, {"id": "1"}))
    assert "not visible" in may_write(ALICE, NewRecord(SECRETS, {"id": "1"}))
    assert "not visible" in may_write(ALICE, NewRecord(("public", "unnamed"), {"id": "1"}))
    assert "truncate" in may_write(ALICE, TruncatedRelation(ITEMS))


def test_a_transaction_is_refused_by_its_first_bad_change():
    good = NewRecord(ITEMS, item("alice"))
    bad = NewRecord(ITEMS, item("bob", id="2"))
    assert first_refusal(ALICE, [good, good]) is None
    assert "outside" in first_refusal(ALICE, [good, bad, good])
    assert first_refusal(ALICE, []) is None


OWNERS = ["alice", "bob", "carol", None]


@pytest.mark.parametrize("before, after", list(itertools.product(OWNERS, OWNERS)))
def test_every_owner_transition_keeps_each_client_replica_exact(before, after):
    """Property: for every client, applying what it receives of insert(before) then
    update(before → after) leaves it holding the row exactly when the row is in its scope."""
    for flt, me in ((ALICE, "alice"), (BOB, "bob")):
        replica = {}
        for change in apply_all(flt, [NewRecord(ITEMS, item(before)),
                                      UpdatedRecord(ITEMS, item(after, title="2"),
                                                    old_record=item(before))]):
            if isinstance(change, (NewRecord, UpdatedRecord)):
                replica[change.record["id"]] = change.record
            else:
                replica.pop(change.old_record["id"], None)
        assert replica == ({"1": item(after, title="2")} if after == me else {})
        # The writer may make this update only if it stays in its scope before and after.
        allowed = may_write(flt, UpdatedRecord(ITEMS, item(after), old_record=item(before)))
        assert (allowed is None) == (before == me and after == me)


def test_random_histories_leave_each_replica_equal_to_its_scope_of_the_table():
    """Property (fixed seeds, so reproducible): whatever inserts, updates (partial or whole,
    moving rows between owners and teams, to and from NULL) and deletes happen, a client that
    applies what it receives holds exactly the rows of the table its filter selects."""
    import random

    rules = parse('[claims]\nsub = "string"\nteams = "string[]"\n\n'
                  '[tables.items]\nrows = "owner_id = claims.sub OR team_id IN claims.teams"\n')
    owners, teams = ["alice", "bob", "carol", None], ["red", "blue", None]
    clients = [effective_filter(rules, claims) for claims in (
        {"sub": "alice", "teams": ["red"]}, {"sub": "bob"}, {"teams": ["red", "blue"]}, {})]
    for seed in range(40):
        rng = random.Random(seed)
        table: dict[str, dict] = {}
        replicas: list[dict[str, dict]] = [{} for _ in clients]
        for _step in range(60):
            key = str(rng.randrange(6))
            new = {"id": key, "owner_id": rng.choice(owners), "team_id": rng.choice(teams),
                   "n": str(rng.randrange(100))}
            if key not in table:
                change = NewRecord(ITEMS, new)
                table[key] = new
            elif rng.random() < 0.2:
                change = DeletedRecord(ITEMS, table.pop(key))
            else:
                # Partial updates carry only some columns; the rest stay as they were.
                sent = {k: v for k, v in new.items() if k == "id" or rng.random() < 0.6}
                change = UpdatedRecord(ITEMS, sent, old_record=table[key])
                table[key] = {**table[key], **sent}
            for flt, replica in zip(clients, replicas, strict=True):
                received = apply(flt, change)
                if isinstance(received, NewRecord):
                    assert received.relation == ITEMS and key not in replica
                    replica[key] = dict(received.record)
                elif isinstance(received, UpdatedRecord):
                    assert key in replica  # never an update of a row the client lacks
                    replica[key].update(received.record)
                elif isinstance(received, DeletedRecord):
                    replica.pop(key, None)
        for flt, replica in zip(clients, replicas, strict=True):
            table_filter = flt.table(ITEMS)
            expected = {k: row for k, row in table.items()
                        if any(all(row.get(c.column) in c.values for c in conj)
                               for conj in table_filter.rows)}
            assert replica == expected, seed


def test_claims_straight_from_authentication_in_both_modes():
    from electric.satellite.auth import InsecureAuth, JwtAuth

    rules = parse('[claims]\nuser_id = "string"\nteams = "string[]"\n\n'
                  '[tables.items]\nrows = "owner_id = claims.user_id"\n\n'
                  '[tables.projects]\nrows = "team_id IN claims.teams"\n')
    plain = effective_filter(rules, InsecureAuth().authenticate("alice").claims)
    assert classify(plain, NewRecord(ITEMS, item("alice"))) is Outcome.PASS
    assert classify(plain, NewRecord(PROJECTS, {"team_id": "red"})) is Outcome.DROP
    jwt_auth = JwtAuth(b"s" * 32, "cluster")
    token, _exp = jwt_auth.mint("bob", claims={"teams": ["red"]})
    signed = effective_filter(rules, jwt_auth.authenticate(token).claims)
    assert classify(signed, NewRecord(ITEMS, item("bob"))) is Outcome.PASS
    assert classify(signed, NewRecord(PROJECTS, {"team_id": "red"})) is Outcome.PASS
    assert classify(signed, NewRecord(ITEMS, item("alice"))) is Outcome.DROP
