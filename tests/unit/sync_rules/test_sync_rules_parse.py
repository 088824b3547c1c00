"""Reading a rules file: the format of docs/sync-rules.md, and one line naming file:line for
every mistake."""

import pytest

from electric.sync_rules import ClaimType, RulesError, load, parse
from electric.sync_rules.model import ALL, NONE, Condition, Op

CLAIMS = '[claims]\nsub = "string"\nteams = "string[]"\norg = "integer"\n\n'


def test_the_documented_example_compiles():
    rules = parse(CLAIMS + '[tables.items]\nrows = "owner_id = claims.sub"\n\n'
                  '[tables."app.projects"]\n'
                  'rows = "team_id IN claims.teams AND org_id = claims.org OR owner_id = claims.sub"\n'
                  'write = false\n\n'
                  '[tables.app.lookup]\nrows = "all"\n\n'
                  '[tables.secrets]\nrows = "none"\n', "r.toml")
    assert rules.claims == {"sub": ClaimType.STRING, "teams": ClaimType.STRING_LIST,
                            "org": ClaimType.INTEGER}
    items = rules.rule(("public", "items"))
    assert items.rows == ((Condition("owner_id", Op.EQ, "sub"),),) and items.write
    assert items.line == 6 and items.rows[0][0].line == 7
    projects = rules.rule(("app", "projects"))
    assert projects.rows == ((Condition("team_id", Op.IN, "teams"), Condition("org_id", Op.EQ, "org")),
                             (Condition("owner_id", Op.EQ, "sub"),))
    assert projects.write is False
    assert rules.rule(("app", "lookup")).rows == ALL
    assert rules.rule(("public", "secrets")).rows == NONE
    assert not rules.rule(("public", "secrets")).visible
    assert rules.rule(("public", "other")) is None


def test_keywords_are_case_insensitive_and_inline_tables_work():
    rules = parse(CLAIMS + '[tables]\nitems = { rows = "owner_id = claims.sub and team_id in claims.teams" }\n'
                  'lookup = { rows = "ALL" }\n')
    assert rules.rule(("public", "items")).rows == (
        (Condition("owner_id", Op.EQ, "sub"), Condition("team_id", Op.IN, "teams")),)
    assert rules.rule(("public", "lookup")).rows == ALL
    assert rules.rule(("public", "items")).line == 7


@pytest.mark.parametrize("text, line, words", [
    ('[tables.items]\nrows = "owner_id == claims.sub"\n', 7, "expected claims.<name>"),
    ('[tables.items]\nrows = "owner_id IN claims.sub"\n', 7, "IN needs a list claim"),
    ('[tables.items]\nrows = "owner_id = claims.teams"\n', 7, "use IN"),
    ('[tables.items]\nrows = "owner_id = claims.nobody"\n', 7, "not declared in [claims]"),
    ('[tables.items]\nrows = "owner_id = \'alice\'"\n', 7, "unexpected"),
    ('[tables.items]\nrows = "owner_id = claims.sub AND"\n', 7, "AND or OR followed by"),
    ('[tables.items]\nrows = "owner_id = claims.sub OR"\n', 7, "AND or OR followed by"),
    ('[tables.items]\nrows = "owner_id ="\n', 7, "incomplete condition"),
    ('[tables.items]\nrows = ""\n', 7, "empty"),
    ('[tables.items]\nrows = 3\n', 7, "rows must be a string"),
    ('[tables.items]\nrow = "all"\n', 7, "unknown key 'row'"),
    ('[tables.items]\nwrite = true\n', 6, "rows is missing"),
    ('[tables.items]\nrows = "all"\nwrite = "no"\n', 8, "write must be true or false"),
    ('[tables.items]\nrows = "all"\n[tables."public.items"]\nrows = "none"\n', 8, "two rules"),
    ('[table.items]\nrows = "all"\n', 6, "unknown key 'table'"),
    ('\n[tables.items\nrows = "all"\n', 7, "not valid TOML"),
])
def test_mistakes_name_the_file_and_line(text, line, words):
    with pytest.raises(RulesError) as err:
        parse(CLAIMS + text, "conf/rules.toml")
    assert str(err.value).startswith(f"conf/rules.toml:{line}: "), str(err.value)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_claim_declarations():
    with pytest.raises(RulesError, match=r"^r:3: claim teams: type 'list' is not one of"):
        parse('[claims]\nsub = "string"\nteams = "list"\n', "r")
    with pytest.raises(RulesError, match=r"^r:2: claim .* must be a plain identifier"):
        parse('[claims]\n"a b" = "string"\n', "r")


def test_load_reads_a_file_and_reports_a_missing_one(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(CLAIMS + '[tables.items]\nrows = "owner_id = claims.sub"\n')
    assert load(str(path)).rule(("public", "items")).visible
    with pytest.raises(RulesError, match=r"nope.toml: cannot read: No such file"):
        load(str(tmp_path / "nope.toml"))


def test_the_example_in_the_documentation_is_valid():
    import os
    import re

    from tests.support.electric import ROOT

    with open(os.path.join(ROOT, "docs", "sync-rules.md"), encoding="utf-8") as fh:
        example = re.search(r"```toml\n(.*?)```", fh.read(), re.S).group(1)
    rules = parse(example, "docs/sync-rules.md")
    assert rules.rule(("app", "countries")).write is False
    assert not rules.rule(("public", "audit_log")).visible
    assert len(rules.rule(("public", "projects")).rows) == 2
