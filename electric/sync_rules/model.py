"""The compiled form of a sync rules file (docs/sync-rules.md).

A table's row filter is kept in disjunctive normal form: a tuple of alternatives (OR), each a
tuple of conditions (AND). ``all`` is one empty alternative (always true), ``none`` is no
alternative at all (never true), so evaluation needs no special cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from electric.changes import RelationName


class RulesError(Exception):
    """A rules file is unusable; ``str()`` is the one line for the operator (file:line: what)."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class ClaimType(Enum):
    """What a claim holds, as declared in the ``[claims]`` section."""

    STRING = "string"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    STRING_LIST = "string[]"
    INTEGER_LIST = "integer[]"
    BOOLEAN_LIST = "boolean[]"

    @property
    def is_list(self) -> bool:
        return self.value.endswith("[]")

    @property
    def scalar(self) -> ClaimType:
        return ClaimType(self.value.removesuffix("[]"))


class Op(Enum):
    EQ = "="
    IN = "IN"


@dataclass(frozen=True)
class Condition:
    """``column = claims.claim`` or ``column IN claims.claim``."""

    column: str
    op: Op
    claim: str
    line: int = field(default=0, compare=False)
    # Set by check() for uuid columns: Postgres prints UUIDs in lowercase, so claims are
    # lowercased before comparing.
    lowercase: bool = False


Conjunction = tuple[Condition, ...]
Expression = tuple[Conjunction, ...]
ALL: Expression = ((),)
NONE: Expression = ()


@dataclass(frozen=True)
class TableRule:
    relation: RelationName
    rows: Expression
    # Whether clients may write the rows they see (``write = false``: read-only table).
    write: bool = True
    line: int = field(default=0, compare=False)

    @property
    def visible(self) -> bool:
        return self.rows != NONE


@dataclass(frozen=True)
class RuleSet:
    """Every table rule of one file; tables it does not name are invisible (``none``)."""

    path: str
    tables: dict[RelationName, TableRule]
    claims: dict[str, ClaimType]
    claims_lines: dict[str, int] = field(default_factory=dict, compare=False)

    def rule(self, relation: RelationName) -> TableRule | None:
        return self.tables.get(tuple(relation))
