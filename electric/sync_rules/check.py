"""Checking a rule set against the replicated tables (docs/sync-rules.md §1.2).

Called once the catalogs are known (every connector has reported its tables into the
:class:`~electric.schema.SchemaRegistry`): a rule naming a table or column that does not
exist, or comparing a claim with a column of another type, is refused with the file and line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from electric.changes import Table
from electric.sync_rules.model import ClaimType, RulesError, RuleSet

# Column types (Postgres type names as the catalogs report them) a claim of each scalar type
# may be compared with. Other column types (floats, dates, json, bytea…) have text forms a
# claim would have to match byte for byte, so they are refused rather than silently
# never matching.
COMPATIBLE: dict[ClaimType, frozenset[str]] = {
    ClaimType.STRING: frozenset({"text", "varchar", "bpchar", "char", "name", "uuid",
                                 "citext"}),
    ClaimType.INTEGER: frozenset({"int2", "int4", "int8", "smallint", "integer", "bigint"}),
    ClaimType.BOOLEAN: frozenset({"bool", "boolean"}),
}


def check(rules: RuleSet, tables: Iterable[Table]) -> RuleSet:
    """Raise :class:`RulesError` for the first rule that does not fit ``tables``; else the
    rules with what the column types imply (UUID claims compared in lowercase). Bind claims
    to the returned rule set."""
    catalog = {t.relation: t for t in tables}
    checked = {}
    for relation, rule in rules.tables.items():
        table = catalog.get(relation)
        label = ".".join(relation)
        if table is None:
            known = ", ".join(sorted(".".join(r) for r in catalog)) or "none"
            raise RulesError(rules.path, rule.line or None,
                             f"{label}: no such replicated table (replicated: {known})")
        alternatives = []
        for alternative in rule.rows:
            conditions = []
            for cond in alternative:
                column = table.column(cond.column)
                if column is None:
                    raise RulesError(rules.path, cond.line or None,
                                     f"{label}: no column {cond.column!r} (columns: "
                                     f"{', '.join(table.column_names())})")
                kind = rules.claims[cond.claim].scalar
                if column.type_name.lower() not in COMPATIBLE[kind]:
                    raise RulesError(rules.path, cond.line or None,
                                     f"{label}: column {cond.column} is {column.type_name}, "
                                     f"claims.{cond.claim} is {rules.claims[cond.claim].value}: "
                                     f"{_compatible_hint(kind)}")
                conditions.append(replace(cond, lowercase=column.type_name.lower() == "uuid"))
            alternatives.append(tuple(conditions))
        checked[relation] = replace(rule, rows=tuple(alternatives))
    return replace(rules, tables=checked)


def _compatible_hint(kind: ClaimType) -> str:
    return f"a {kind.value} claim compares with {', '.join(sorted(COMPATIBLE[kind]))} columns"
