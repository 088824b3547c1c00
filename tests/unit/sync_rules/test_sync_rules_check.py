"""Validation of a rule set against the replicated tables (the schema registry's Table)."""

import pytest

from electric.changes import Column, Table
from electric.sync_rules import RulesError, check, parse

TABLES = [
    Table("public", "items", 20000, (Column("id", "uuid"), Column("owner_id", "text"),
                                     Column("org_id", "int8"), Column("done", "bool"),
                                     Column("price", "float8")), ("id",)),
    Table("app", "lookup", 20001, (Column("id", "int4"),), ("id",)),
]
CLAIMS = '[claims]\nsub = "string"\norg = "integer"\nadmin = "boolean"\nids = "string[]"\n\n'


def rules(text):
    return parse(CLAIMS + text, "rules.toml")


def test_a_fitting_rule_set_passes():
    check(rules('[tables.items]\nrows = "owner_id = claims.sub OR org_id = claims.org '
                'OR done = claims.admin OR id IN claims.ids"\n'
                '[tables.app.lookup]\nrows = "all"\n'), TABLES)


@pytest.mark.parametrize("text, line, words", [
    ('[tables.nothing]\nrows = "all"\n', 7, "public.nothing: no such replicated table "
                                            "(replicated: app.lookup, public.items)"),
    ('[tables.items]\nrows = "owner = claims.sub"\n', 8, "no column 'owner' (columns: id,"),
    ('[tables.items]\nrows = "org_id = claims.sub"\n', 8, "column org_id is int8, claims.sub is string"),
    ('[tables.items]\nrows = "owner_id = claims.org"\n', 8, "column owner_id is text, claims.org is integer"),
    ('[tables.items]\nrows = "owner_id = claims.admin"\n', 8, "claims.admin is boolean"),
    ('[tables.items]\nrows = "price = claims.org"\n', 8, "column price is float8"),
    ('[tables.items]\nrows = "org_id IN claims.ids"\n', 8, "claims.ids is string[]"),
    ('\n[tables.app.lookup]\nrows = "all"\n\n[tables.items]\nrows = "id = claims.org"\n', 12,
     "column id is uuid"),
])
def test_mismatches_name_the_line(text, line, words):
    with pytest.raises(RulesError) as err:
        check(rules(text), TABLES)
    assert str(err.value).startswith(f"rules.toml:{line}: "), str(err.value)
    assert words in str(err.value)


def test_none_rules_still_need_their_table():
    with pytest.raises(RulesError, match="no such replicated table"):
        check(rules('[tables.gone]\nrows = "none"\n'), TABLES)


def test_checked_against_what_the_connectors_reported_to_the_registry():
    from electric.schema import SchemaRegistry

    registry = SchemaRegistry()
    text = '[tables.items]\nrows = "owner_id = claims.sub"\n'
    with pytest.raises(RulesError, match="replicated: none"):
        check(rules(text), registry.tables())
    registry.put_tables("all_tables", TABLES[:1])
    check(rules(text), registry.tables())


def test_uuid_claims_are_compared_in_lowercase_after_the_check():
    from electric.changes import NewRecord
    from electric.sync_rules import Outcome, classify, effective_filter

    text = '[tables.items]\nrows = "id IN claims.ids OR owner_id = claims.sub"\n'
    checked = check(rules(text), TABLES)
    claims = {"ids": ["A5408365-7BF4-48B1-AFE2-CB8171631D7C"], "sub": "Alice"}
    row = {"id": "a5408365-7bf4-48b1-afe2-cb8171631d7c", "owner_id": "x"}
    assert classify(effective_filter(checked, claims), NewRecord(("public", "items"), row)) \
        is Outcome.PASS
    # Text columns keep their case; unchecked rules know no column types.
    assert classify(effective_filter(checked, claims), NewRecord(
        ("public", "items"), {"id": "0", "owner_id": "alice"})) is Outcome.DROP
    assert classify(effective_filter(rules(text), claims), NewRecord(("public", "items"), row)) \
        is Outcome.DROP
