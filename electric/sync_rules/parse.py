"""Reading a sync rules file (TOML, docs/sync-rules.md) into a :class:`RuleSet`.

Pure apart from :func:`load`, which reads the file. Every problem raises :class:`RulesError`
naming the file and, where there is one, the line: Python's TOML reader reports line numbers
only for syntax errors, so :class:`_Lines` finds the line of each key itself (a key's dotted
path is parsed with the TOML reader too, so quoting rules are the standard's).
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from electric.sync_rules.model import (
    ALL,
    NONE,
    ClaimType,
    Condition,
    Conjunction,
    Expression,
    Op,
    RulesError,
    RuleSet,
    TableRule,
)

TABLE_KEYS = {"rows", "write"}
TOP_KEYS = {"claims", "tables"}
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*$")
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED_KEY})\s*\]")
_ASSIGN = re.compile(rf"^\s*({_DOTTED_KEY})\s*=")
_TOKEN = re.compile(r"""\s*(?:(?P<word>[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$-]*)?)"""
                    r"""|(?P<op>=)|(?P<bad>\S+))""")


def _key_path(dotted: str) -> tuple[str, ...] | None:
    """``tables."public.items"`` → ``("tables", "public.items")``, by the TOML reader."""
    try:
        doc: Any = tomllib.loads(f"{dotted} = 0")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(doc, dict) and len(doc) == 1:
        (key, doc), = doc.items()
        path.append(key)
    return tuple(path)


class _Lines:
    """Line number of each key path of a TOML text (first definition wins)."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        section: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), 1):
            header = _HEADER.match(line)
            if header and not line.lstrip().startswith("[["):
                section = _key_path(header.group(1)) or section
                self.lines.setdefault(section, number)
                continue
            assign = _ASSIGN.match(line)
            if assign:
                path = _key_path(assign.group(1))
                if path:
                    self.lines.setdefault(section + path, number)

    def of(self, *path: str) -> int | None:
        """The line of ``path``, else of the first key under it (``[a.b]`` defines ``a``),
        else of its nearest enclosing key that has one."""
        if path in self.lines:
            return self.lines[path]
        inner = [n for p, n in self.lines.items() if p[:len(path)] == path]
        if inner:
            return min(inner)
        for end in range(len(path) - 1, 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def load(path: str) -> RuleSet:
    """Read and compile the rules file at ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise RulesError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RulesError(path, None, "not UTF-8 text") from None
    return parse(text, path)


def parse(text: str, path: str = "<rules>") -> RuleSet:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The reader's message ends "(at line N, column M)": move the line to the front.
        message = str(exc)
        found = re.search(r"\(at line (\d+), column \d+\)$", message)
        line = int(found.group(1)) if found else None
        if found is None and message.endswith("(at end of document)"):
            line = max(1, len(text.splitlines()))
            found = re.search(r"\(at end of document\)$", message)
        problem = message[:found.start()].strip() if found else message
        raise RulesError(path, line, f"not valid TOML: {problem}") from None
    lines = _Lines(text)

    def fail(where: tuple[str, ...], problem: str) -> RulesError:
        return RulesError(path, lines.of(*where), problem)

    for key in doc:
        if key not in TOP_KEYS:
            raise fail((key,), f"unknown key {key!r} (expected [claims] and [tables])")
    claims, claims_lines = _claims(doc.get("claims", {}), lines, fail)
    tables_doc = doc.get("tables", {})
    if not isinstance(tables_doc, dict):
        raise fail(("tables",), "tables must be a table of per-table rules")
    tables: dict[tuple[str, str], TableRule] = {}
    for where, relation, body in _table_entries(tables_doc, fail):
        if relation in tables:
            raise fail(where, f"table {'.'.join(relation)} has two rules")
        tables[relation] = _table_rule(where, relation, body, claims, lines, fail)
    return RuleSet(path=path, tables=tables, claims=claims, claims_lines=claims_lines)


def _claims(doc: Any, lines: _Lines, fail) -> tuple[dict[str, ClaimType], dict[str, int]]:
    if not isinstance(doc, dict):
        raise fail(("claims",), "claims must be a table of name = \"type\"")
    claims: dict[str, ClaimType] = {}
    where_lines: dict[str, int] = {}
    kinds = ", ".join(t.value for t in ClaimType)
    for name, kind in doc.items():
        if not IDENT.match(name):
            raise fail(("claims", name), f"claim name {name!r} must be a plain identifier")
        try:
            claims[name] = ClaimType(kind) if isinstance(kind, str) else ClaimType("?")
        except ValueError:
            raise fail(("claims", name),
                       f"claim {name}: type {kind!r} is not one of {kinds}") from None
        where_lines[name] = lines.of("claims", name) or 0
    return claims, where_lines


def _table_entries(doc: dict, fail):
    """``(key path, (schema, table), body)`` for each rule, in file order.

    ``[tables."app.items"]`` and ``[tables.app.items]`` both name app.items; a name without a
    schema (``[tables.items]``) is in ``public``."""
    for key, body in doc.items():
        where = ("tables", key)
        if not isinstance(body, dict):
            raise fail(where, f"tables.{key} must be a table with rows = \"…\"")
        if "." in key:
            schema, _, name = key.partition(".")
            yield where, (schema, name), body
        elif body and not (set(body) & TABLE_KEYS) and all(isinstance(v, dict)
                                                           for v in body.values()):
            for name, inner in body.items():  # [tables.<schema>.<table>]
                yield where + (name,), (key, name), inner
        else:
            yield where, ("public", key), body


def _table_rule(where, relation, body, claims, lines: _Lines, fail) -> TableRule:
    label = ".".join(relation)
    if not relation[0] or not relation[1]:
        raise fail(where, f"table name {label!r} must be schema.table or table")
    unknown = sorted(set(body) - TABLE_KEYS)
    if unknown:
        raise fail(where + (unknown[0],), f"{label}: unknown key {unknown[0]!r} "
                                          f"(expected rows and write)")
    if "rows" not in body:
        raise fail(where, f"{label}: rows is missing (\"all\", \"none\" or a filter)")
    rows = body["rows"]
    if not isinstance(rows, str):
        raise fail(where + ("rows",), f"{label}: rows must be a string")
    line = lines.of(*where, "rows") or 0
    write = body.get("write", True)
    if not isinstance(write, bool):
        raise fail(where + ("write",), f"{label}: write must be true or false")
    try:
        expression = parse_expression(rows, claims, line)
    except ValueError as exc:
        raise RulesError(fail(where, "").path, line or None,
                         f"{label}: rows: {exc}") from None
    return TableRule(relation=relation, rows=expression, write=write,
                     line=lines.of(*where) or 0)


def parse_expression(text: str, claims: dict[str, ClaimType], line: int = 0) -> Expression:
    """``a = claims.x AND b IN claims.y OR …`` (AND binds tighter), ``all`` or ``none``.

    Raises ValueError with what is wrong."""
    words = _tokens(text)
    if [w.lower() for w in words] == ["all"]:
        return ALL
    if [w.lower() for w in words] == ["none"]:
        return NONE
    if not words:
        raise ValueError('empty; write "all", "none" or a filter such as owner_id = claims.sub')
    alternatives: list[Conjunction] = []
    conjunction: list[Condition] = []
    i = 0
    while True:
        if i + 3 > len(words):
            raise ValueError(f"incomplete condition after {' '.join(words[:i]) or 'start'!r}")
        column, op_word, operand = words[i], words[i + 1], words[i + 2]
        if not IDENT.match(column) or column.lower() in ("and", "or", "in", "all", "none"):
            raise ValueError(f"expected a column name, found {column!r}")
        if op_word == "=":
            op = Op.EQ
        elif op_word.lower() == "in":
            op = Op.IN
        else:
            raise ValueError(f"expected = or IN after {column}, found {op_word!r}")
        if not operand.startswith("claims.") or not IDENT.match(operand[7:]):
            raise ValueError(f"expected claims.<name> after {column} {op.value}, "
                             f"found {operand!r}")
        claim = operand[7:]
        kind = claims.get(claim)
        if kind is None:
            raise ValueError(f"claim {claim!r} is not declared in [claims]")
        if op is Op.IN and not kind.is_list:
            raise ValueError(f"{column} IN claims.{claim}: IN needs a list claim, "
                             f"{claim} is {kind.value}")
        if op is Op.EQ and kind.is_list:
            raise ValueError(f"{column} = claims.{claim}: {claim} is a list ({kind.value}); "
                             f"use IN")
        conjunction.append(Condition(column=column, op=op, claim=claim, line=line))
        i += 3
        if i == len(words):
            break
        joiner = words[i].lower()
        if joiner not in ("and", "or") or i + 1 == len(words):
            raise ValueError(f"expected AND or OR followed by a condition, found "
                             f"{' '.join(words[i:])!r}")
        if joiner == "or":
            alternatives.append(tuple(conjunction))
            conjunction = []
        i += 1
    alternatives.append(tuple(conjunction))
    return tuple(alternatives)


def _tokens(text: str) -> list[str]:
    words = []
    for m in _TOKEN.finditer(text):
        if m.group("bad"):
            raise ValueError(f"unexpected {m.group('bad')!r}")
        word = m.group("word") or m.group("op")
        if word:
            words.append(word)
    return words
