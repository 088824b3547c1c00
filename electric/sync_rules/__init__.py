"""Sync rules: which rows each Satellite client receives and may write (docs/sync-rules.md).

Sans-I/O: :func:`load`/:func:`parse` compile a rules file, :func:`check` validates it
against the replicated tables, :func:`effective_filter` binds it to a client's claims, and
:func:`apply`/:func:`may_write` decide per change.
"""

from electric.sync_rules.check import check
from electric.sync_rules.evaluate import (
    EffectiveFilter,
    Outcome,
    TableFilter,
    apply,
    apply_all,
    apply_traced,
    classify,
    effective_filter,
    first_refusal,
    may_write,
    row_in_scope,
)
from electric.sync_rules.model import ClaimType, RulesError, RuleSet, TableRule
from electric.sync_rules.parse import load, parse

__all__ = [
    "ClaimType", "EffectiveFilter", "Outcome", "RuleSet", "RulesError", "TableFilter",
    "TableRule", "apply", "apply_all", "apply_traced", "check", "classify", "effective_filter",
    "first_refusal", "load", "may_write", "parse", "row_in_scope",
]
