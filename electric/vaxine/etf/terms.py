"""Erlang terms in Python: the external term format's tags, the term types that have no
Python built-in, and list-cell helpers (see :mod:`electric.vaxine.etf` for the mapping)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "VERSION",
    "NEW_FLOAT",
    "BIT_BINARY",
    "COMPRESSED",
    "NEW_PID",
    "NEW_PORT",
    "NEWER_REFERENCE",
    "SMALL_INTEGER",
    "INTEGER",
    "FLOAT",
    "ATOM",
    "PID",
    "SMALL_TUPLE",
    "LARGE_TUPLE",
    "NIL",
    "STRING",
    "LIST",
    "BINARY",
    "SMALL_BIG",
    "LARGE_BIG",
    "NEW_REFERENCE",
    "SMALL_ATOM",
    "MAP",
    "ATOM_UTF8",
    "SMALL_ATOM_UTF8",
    "ETFError",
    "Atom",
    "ImproperList",
    "Pid",
    "Reference",
    "RawTerm",
    "TRUE",
    "FALSE",
    "NIL_ATOM",
    "cons_cell",
    "split_cell",
]

VERSION = 131

NEW_FLOAT = 70
BIT_BINARY = 77
COMPRESSED = 80
NEW_PID = 88
NEW_PORT = 89
NEWER_REFERENCE = 90
SMALL_INTEGER = 97
INTEGER = 98
FLOAT = 99
ATOM = 100
PID = 103
SMALL_TUPLE = 104
LARGE_TUPLE = 105
NIL = 106
STRING = 107
LIST = 108
BINARY = 109
SMALL_BIG = 110
LARGE_BIG = 111
NEW_REFERENCE = 114
SMALL_ATOM = 115
MAP = 116
ATOM_UTF8 = 118
SMALL_ATOM_UTF8 = 119



class ETFError(ValueError):
    """The bytes are not a valid (supported) external term."""


class Atom(str):
    """An Erlang atom.

    A ``str`` subclass so hashing and equality run at C speed (terms are compared and used
    as dict keys constantly). Terms never contain plain ``str`` (binaries are ``bytes``),
    so an atom is never confused with another term.
    """

    __slots__ = ()

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"

    def __reduce__(self):
        return (Atom, (self.name,))


@dataclass(frozen=True, slots=True)
class ImproperList:
    """``[I1, I2, ... | Tail]`` where Tail is not ``[]`` (e.g. an Erlang dict cell ``[K | V]``)."""

    items: tuple
    tail: Any


@dataclass(frozen=True, slots=True)
class Pid:
    node: Atom
    id: int
    serial: int
    creation: int


@dataclass(frozen=True, slots=True)
class Reference:
    node: Atom
    creation: int
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RawTerm:
    """An already encoded term body (no version byte), spliced verbatim when encoding.

    Lets hot paths reuse constant sub-terms (e.g. an Erlang dict's empty segment).
    """

    body: bytes


TRUE = Atom("true")
FALSE = Atom("false")
NIL_ATOM = Atom("nil")


def cons_cell(head: Any, tail: Any) -> Any:
    """``[Head | Tail]`` as Erlang builds it (a proper list when Tail is a list)."""
    if isinstance(tail, list):
        return [head, *tail]
    if isinstance(tail, ImproperList):
        return ImproperList((head, *tail.items), tail.tail)
    return ImproperList((head,), tail)


def split_cell(cell: Any) -> tuple[Any, Any]:
    """Inverse of :func:`cons_cell`: ``[H | T]`` → (H, T)."""
    if isinstance(cell, ImproperList) and cell.items:
        rest = cell.items[1:]
        return cell.items[0], (ImproperList(rest, cell.tail) if rest else cell.tail)
    if isinstance(cell, list) and cell:
        return cell[0], cell[1:]
    raise ETFError("not a non-empty list cell")
