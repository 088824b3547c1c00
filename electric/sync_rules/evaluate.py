"""Applying a rule set to one client: its effective filter, what it receives, what it may write.

Pure functions (docs/sync-rules.md §3 and §4). :func:`effective_filter` binds the rules to a client's
token claims once, at authentication; the result is hashable and equal for clients whose
claims select the same rows, so a fan-out can encode a transaction once per distinct filter
rather than once per client. Values are compared in their text form (the change model keeps
Postgres' text representation): a claim ``42`` matches the int column text ``"42"``, ``true``
matches ``"t"``. SQL NULL matches nothing, as in SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from electric.changes import (
    Change,
    DeletedRecord,
    NewRecord,
    Record,
    RelationName,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.sync_rules.model import ClaimType, Expression, RuleSet


@dataclass(frozen=True)
class BoundCondition:
    """The row's ``column`` must hold one of ``values`` (text forms)."""

    column: str
    values: frozenset[str]


BoundConjunction = tuple[BoundCondition, ...]


@dataclass(frozen=True)
class TableFilter:
    # Alternatives (OR) of conjunctions (AND); () matches no row, ((),) every row.
    rows: tuple[BoundConjunction, ...]
    write: bool = True

    @property
    def everything(self) -> bool:
        return () in self.rows


@dataclass(frozen=True)
class EffectiveFilter:
    """One client's view: the visible tables and, per table, which rows."""

    tables: tuple[tuple[RelationName, TableFilter], ...]
    # Why some conditions match nothing for this client (missing or mistyped claims): for
    # logs and status, not part of the filter's identity.
    problems: tuple[str, ...] = field(default=(), compare=False, hash=False)
    _by_relation: dict[RelationName, TableFilter] = field(
        default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        self._by_relation.update(self.tables)

    def table(self, relation: RelationName) -> TableFilter | None:
        found = self._by_relation.get(relation)
        return found if found is not None or type(relation) is tuple else \
            self._by_relation.get(tuple(relation))

    def visible_tables(self) -> list[RelationName]:
        return [relation for relation, _ in self.tables]

    def summary(self) -> dict[str, Any]:
        """Counts for /api/status: never row values or claim values."""
        return {
            "visible_tables": len(self.tables),
            "filtered_tables": sum(1 for _, t in self.tables if not t.everything),
            "empty_tables": sum(1 for _, t in self.tables if not t.rows),
            "read_only_tables": sum(1 for _, t in self.tables if not t.write),
            "claim_problems": len(self.problems),
        }


class Outcome(Enum):
    PASS = "pass"          # send as it is
    DROP = "drop"          # the client must not see it
    AS_INSERT = "insert"   # the row entered the client's scope: send the whole new row
    AS_DELETE = "delete"   # the row left the client's scope: send a delete of the old row


# -- binding claims -------------------------------------------------------------------------

def effective_filter(rules: RuleSet, claims: Mapping[str, Any]) -> EffectiveFilter:
    """Bind ``rules`` to one client's verified ``claims``.

    A claim that is missing, null or not of its declared type makes the conditions using it
    match nothing (listed in ``problems``); so does an empty list for IN."""
    problems: list[str] = []
    bound_values: dict[str, frozenset[str]] = {}
    for name, kind in rules.claims.items():
        values, problem = _claim_values(claims, name, kind)
        bound_values[name] = values
        if problem:
            problems.append(problem)
    tables = []
    for relation in sorted(rules.tables):
        rule = rules.tables[relation]
        if not rule.visible:
            continue
        tables.append((relation, TableFilter(_bind(rule.rows, bound_values), rule.write)))
    return EffectiveFilter(tables=tuple(tables), problems=tuple(problems))


def _claim_values(claims: Mapping[str, Any], name: str,
                  kind: ClaimType) -> tuple[frozenset[str], str | None]:
    if name not in claims or claims[name] is None:
        return frozenset(), f"claim {name} is missing"
    value = claims[name]
    if kind.is_list:
        if not isinstance(value, list):
            return frozenset(), f"claim {name} is not a list"
        texts = [_text(v, kind.scalar) for v in value]
        good = frozenset(t for t in texts if t is not None)
        bad = texts.count(None)
        return good, (f"claim {name}: {bad} element(s) not {kind.scalar.value}" if bad else None)
    text = _text(value, kind)
    if text is None:
        return frozenset(), f"claim {name} is not {kind.value}"
    return frozenset({text}), None


def _text(value: Any, kind: ClaimType) -> str | None:
    """The text form Postgres gives a column value equal to ``value``, or None if mistyped."""
    if kind is ClaimType.STRING:
        return value if isinstance(value, str) else None
    if kind is ClaimType.INTEGER:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if kind is ClaimType.BOOLEAN:
        return ("t" if value else "f") if isinstance(value, bool) else None
    return None


def _bind(rows: Expression, values: dict[str, frozenset[str]]) -> tuple[BoundConjunction, ...]:
    alternatives: set[BoundConjunction] = set()
    for conjunction in rows:
        bound: dict[str, frozenset[str]] = {}
        for cond in conjunction:
            allowed = values[cond.claim]
            if cond.lowercase:
                allowed = frozenset(v.lower() for v in allowed)
            # Two conditions on one column: the row's value must satisfy both.
            bound[cond.column] = bound[cond.column] & allowed if cond.column in bound else allowed
        if any(not v for v in bound.values()):
            continue  # this alternative matches nothing for this client
        alternatives.add(tuple(BoundCondition(c, bound[c]) for c in sorted(bound)))
    if () in alternatives:
        return ((),)
    # Sorted so that equal filters compare (and hash) equal whatever the file order.
    return tuple(sorted(alternatives, key=_conjunction_key))


def _conjunction_key(conj: BoundConjunction) -> tuple:
    return tuple((c.column, tuple(sorted(c.values))) for c in conj)


# -- rows -----------------------------------------------------------------------------------

def row_in_scope(table: TableFilter, record: Record) -> bool:
    """Whether ``record`` satisfies the filter. A column absent from the record or NULL
    matches nothing."""
    # Plain loops: this runs per change per distinct filter, generators cost twice as much.
    for conj in table.rows:
        for cond in conj:
            if record.get(cond.column) not in cond.values:
                break
        else:
            return True
    return False


def _columns_known(table: TableFilter, record: Record) -> bool:
    return all(c.column in record for conj in table.rows for c in conj)


def classify(flt: EffectiveFilter, change: Change) -> Outcome:
    """What a client with filter ``flt`` receives of ``change`` read from the log."""
    table = flt.table(change.relation)
    if table is None:
        return Outcome.DROP
    if isinstance(change, TruncatedRelation):
        return Outcome.PASS
    if table.everything:
        return Outcome.PASS
    if isinstance(change, NewRecord):
        return Outcome.PASS if row_in_scope(table, change.record) else Outcome.DROP
    if isinstance(change, DeletedRecord):
        # A delete whose old row lacks the filter columns cannot be placed: sending it is
        # harmless (a client deletes a row it does not have as a no-op), hiding it is not.
        if row_in_scope(table, change.old_record) or not _columns_known(table,
                                                                        change.old_record):
            return Outcome.PASS
        return Outcome.DROP
    assert isinstance(change, UpdatedRecord)
    new_row = {**(change.old_record or {}), **change.record}
    now_in = row_in_scope(table, new_row)
    before = change.old_record if change.old_record else change.prior
    if before is not None and not before:
        # The store had no live row: the client cannot have it (sent as it is when visible).
        return Outcome.PASS if now_in else Outcome.DROP
    if before is None:
        # Without the old row we cannot tell whether the client has it: an update of a row
        # in scope is sent as an update, one out of scope as a (possibly no-op) delete.
        return Outcome.PASS if now_in else Outcome.AS_DELETE
    was_in = row_in_scope(table, before)
    if now_in:
        return Outcome.PASS if was_in else Outcome.AS_INSERT
    return Outcome.AS_DELETE if was_in else Outcome.DROP


KeyColumns = Callable[[RelationName], Sequence[str]]
"""A table's primary key columns (``relation -> names``)."""


def apply(flt: EffectiveFilter, change: Change, keys: KeyColumns | None = None,
          empty: bool = False) -> Change | None:
    """The change to send to the client, rewritten when the row crossed its scope.

    An update without its old row whose new row is out of scope becomes a delete: with
    ``keys`` it carries only the primary key columns, so a client that never had the row
    learns no more than which key changed (Electric's log keeps rows after the change only,
    see docs/sync-rules.md §3); without ``keys`` it carries the row.

    ``empty``: the client holds no row yet (the first transaction of a sync from the start
    of the log, a snapshot), so it is sent no delete at all."""
    return _rewrite(change, _outcome(flt, change, empty), keys)


def _outcome(flt: EffectiveFilter, change: Change, empty: bool = False) -> Outcome:
    if type(change) is NewRecord:  # the common case, decided without the general path
        table = flt.table(change.relation)
        return Outcome.PASS if table is not None and row_in_scope(table, change.record) \
            else Outcome.DROP
    outcome = classify(flt, change)
    if empty and (outcome is Outcome.AS_DELETE or (outcome is Outcome.PASS
                                                   and isinstance(change, DeletedRecord))):
        return Outcome.DROP  # nothing to delete at a client that holds nothing
    return outcome


def _rewrite(change: Change, outcome: Outcome, keys: KeyColumns | None) -> Change | None:
    """What ``outcome`` makes of ``change``: a function of the two alone (so clients whose
    filters give a transaction the same outcomes receive the same changes)."""
    if outcome is Outcome.PASS:
        return change
    if outcome is Outcome.DROP:
        return None
    assert isinstance(change, UpdatedRecord)
    new_row = {**(change.old_record or {}), **change.record}
    if outcome is Outcome.AS_INSERT:
        return NewRecord(change.relation, new_row)
    if change.old_record is not None:
        return DeletedRecord(change.relation, change.old_record)
    if keys is None:
        return DeletedRecord(change.relation, new_row)
    return DeletedRecord(change.relation,
                         {k: new_row[k] for k in keys(change.relation) if k in new_row})


def apply_traced(flt: EffectiveFilter, changes: Iterable[Change],
                 keys: KeyColumns | None = None,
                 empty: bool = False) -> tuple[list[Change], tuple[Outcome, ...]]:
    """:func:`apply_all`, and the outcome of every change: what the client receives is a
    function of the changes and these outcomes alone, so clients with different filters but
    equal outcomes for a transaction can share its encoding."""
    out, outcomes = [], []
    for change in changes:
        outcome = _outcome(flt, change, empty)
        outcomes.append(outcome)
        sent = _rewrite(change, outcome, keys)
        if sent is not None:
            out.append(sent)
    return out, tuple(outcomes)


def apply_all(flt: EffectiveFilter, changes: Iterable[Change],
              keys: KeyColumns | None = None) -> list[Change]:
    """:func:`apply` over a transaction's changes, dropping what the client must not see."""
    out = []
    for change in changes:
        sent = apply(flt, change, keys)
        if sent is not None:
            out.append(sent)
    return out


# -- writes ---------------------------------------------------------------------------------

def may_write(flt: EffectiveFilter, change: Change) -> str | None:
    """``None`` if a client with filter ``flt`` may write ``change``, else why not.

    A write must stay inside the writer's scope: the row before (update, delete) and after
    (insert, update) must both satisfy the filter, so a client can neither touch rows it
    cannot see nor hand rows to another scope (docs/sync-rules.md §4)."""
    label = ".".join(change.relation)
    table = flt.table(change.relation)
    if table is None:
        return f"table {label} is not visible to this client"
    if not table.write:
        return f"table {label} is read-only for clients"
    if table.everything:
        return None
    if isinstance(change, TruncatedRelation):
        return f"truncate of {label}: clients may truncate only tables they see whole"
    if isinstance(change, NewRecord):
        if not row_in_scope(table, change.record):
            return f"insert into {label}: the row is outside this client's rules"
        return None
    if isinstance(change, DeletedRecord):
        if not row_in_scope(table, change.old_record):
            return f"delete from {label}: the row is outside this client's rules"
        return None
    assert isinstance(change, UpdatedRecord)
    if change.old_record is None:
        return f"update of {label}: without its old row the update cannot be checked"
    if not row_in_scope(table, change.old_record):
        return f"update of {label}: the row is outside this client's rules"
    if not row_in_scope(table, {**change.old_record, **change.record}):
        return f"update of {label}: the update would move the row out of this client's rules"
    return None


def first_refusal(flt: EffectiveFilter, changes: Iterable[Change]) -> str | None:
    """The reason to refuse a client transaction (all or nothing), or None."""
    for change in changes:
        reason = may_write(flt, change)
        if reason is not None:
            return reason
    return None
