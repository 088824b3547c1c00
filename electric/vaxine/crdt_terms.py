"""The CRDT types Electric stores in Vaxine, as Erlang terms: shared by client and server.

The type names, the Erlang shapes their states and effects travel in (the WAL stream's
``Ops``, read replies), reading an Erlang ``dict`` term, and encoding states and effects
straight to ETF bytes. The Vaxine client (:mod:`electric.vaxine.rows`) reads transactions
with these; the standalone server (:mod:`electric.vaxine.embedded.crdt`, the CRDTs'
semantics) writes them.

Shapes, as :func:`electric.vaxine.etf.decode` returns them:

* LWW register (``antidote_crdt_register_lww``): state and effect ``{Ts, Value}``.
* Disable-wins flag (``antidote_crdt_flag_dw``): state ``{EnableTokens, DisableTokens}``,
  effect ``{Seen, NewEnable, NewDisable}`` (lists of token binaries).
* Recursive-reset map (``antidote_crdt_map_rr``): state an Erlang ``dict`` of
  ``{Field, Type} => NestedState``, effect ``{[{{Field, Type}, {ok, NestedEffect}}],
  [{{Field, Type}, {ok, Reset} | none}]}``.
"""

from __future__ import annotations

import zlib
from typing import Any

from electric.vaxine.etf import (
    Atom,
    ETFError,
    ImproperList,
    RawTerm,
    binary,
    encode_body,
    integer,
    list_head,
    list_of,
    split_cell,
    tuple_head,
)

MAP_RR = Atom("antidote_crdt_map_rr")
LWW = Atom("antidote_crdt_register_lww")
FLAG_DW = Atom("antidote_crdt_flag_dw")
TYPES = (MAP_RR, LWW, FLAG_DW)

OK = Atom("ok")
NONE = Atom("none")
DICT = Atom("dict")

# Type name (Atom or plain str) → its Atom.
TYPE_ATOMS: dict[str, Atom] = {t: t for t in TYPES}


class CrdtError(ValueError):
    """An operation that this type does not support, or a malformed state/effect."""


# --------------------------------------------------------------------------- terms
#
# map_rr states travel as Erlang ``dict`` terms. Readers (Electric uses dict:to_list) walk
# every bucket, so placement does not matter for them; we use a fixed 16-bucket layout with
# crc32 placement instead of erlang:phash/2.

_NO_CELLS: list = []
_EMPTY_TERM = (_NO_CELLS,) * 16
_EMPTY_SEGMENT = RawTerm(encode_body(_EMPTY_TERM))


def to_term(crdt_type: Atom, state: Any) -> Any:
    """The state as an Erlang term, exactly as :func:`etf.decode` returns its encoding
    (``decode(encode_state(t, s)) == to_term(t, s)``; read-only: parts are shared)."""
    if crdt_type == LWW:
        return tuple(state)
    if crdt_type == FLAG_DW:
        return (list(state[0]), list(state[1]))
    if crdt_type == MAP_RR:
        # Empty buckets share one [] (fewer allocations: this runs for every streamed row).
        buckets: list[list] = [_NO_CELLS] * 16
        for (field, ftype), nested in state.items():
            slot = zlib.crc32(field) % 16
            # [Key | Value]: Value is always a tuple, so the cell is improper
            cell = ImproperList(((field, TYPE_ATOMS.get(ftype, ftype)),), to_term(ftype, nested))
            if buckets[slot] is _NO_CELLS:
                buckets[slot] = [cell]
            else:
                buckets[slot].append(cell)
        return (DICT, len(state), 16, 16, 8, 80, 48, _EMPTY_TERM, (tuple(buckets),))
    raise CrdtError(f"unsupported CRDT type {crdt_type}")


def dict_to_list(term: Any) -> list[tuple[Any, Any]]:
    """``dict:to_list/1`` on an Erlang dict term (any layout)."""
    if not (isinstance(term, tuple) and len(term) == 9 and term[0] == DICT):
        raise CrdtError("not an Erlang dict term")
    out = []
    for segment in term[8]:
        for bucket in segment:
            for cell in bucket:
                try:
                    out.append(split_cell(cell))
                except ETFError as exc:
                    raise CrdtError("malformed dict bucket") from exc
    return out


# --------------------------------------------------------------------------- fast encoding
#
# Straight to ETF bytes, without building the intermediate term: the commit path encodes
# every touched key's full state and effects, which dominated commit CPU when done through
# to_term + the generic encoder. Output is identical (tests compare both).

_key_cache: dict[tuple, bytes] = {}


def key_bytes(field: bytes, ftype: Atom) -> bytes:
    """ETF of ``{Field, Type}`` (cached: few distinct field names)."""
    cached = _key_cache.get((field, ftype))
    if cached is None:
        cached = encode_body((field, TYPE_ATOMS.get(ftype, ftype)))
        if len(_key_cache) < 10_000:
            _key_cache[(field, ftype)] = cached
    return cached


def _bin_list(items: list) -> bytes:
    return list_of([binary(i) for i in items])


_DICT_HEAD = encode_body(DICT)
_DICT_CONSTS = b"".join(encode_body(n) for n in (16, 16, 8, 80, 48))
_PAIR = tuple_head(2)
_TRIPLE = tuple_head(3)
_DICT_TUPLE = tuple_head(9)
_SEGMENTS = tuple_head(1) + tuple_head(16)  # {{Bucket1, ..., Bucket16}}
_CELL = list_head(1)  # [{Field, Type} | State]: one item, the state as the tail


def encode_state(crdt_type: Atom, state: Any) -> bytes:
    """``encode_body(to_term(crdt_type, state))``, faster."""
    if crdt_type == LWW:
        return _PAIR + integer(state[0]) + binary(state[1])
    if crdt_type == FLAG_DW:
        return _PAIR + _bin_list(state[0]) + _bin_list(state[1])
    if crdt_type == MAP_RR:
        buckets: list[list[bytes]] = [[] for _ in range(16)]
        for (field, ftype), nested in state.items():
            buckets[zlib.crc32(field) % 16].append(
                _CELL + key_bytes(field, ftype) + encode_state(ftype, nested))
        segment = b"".join(list_of(cells) for cells in buckets)
        return (_DICT_TUPLE + _DICT_HEAD + integer(len(state)) + _DICT_CONSTS
                + _EMPTY_SEGMENT.body + _SEGMENTS + segment)
    raise CrdtError(f"unsupported CRDT type {crdt_type}")


OK_BYTES = encode_body(OK)
NONE_BYTES = encode_body(NONE)


def encode_effect(crdt_type: Atom, effect: Any) -> bytes:
    """``encode_body(effect)``, faster."""
    if crdt_type == LWW:
        return _PAIR + integer(effect[0]) + binary(effect[1])
    if crdt_type == FLAG_DW:
        return _TRIPLE + b"".join(_bin_list(tokens) for tokens in effect)
    if crdt_type == MAP_RR:
        updates, removes = effect
        parts = []
        for items in (updates, removes):
            cells = []
            for (field, ftype), nested in items:
                inner = (NONE_BYTES if nested == NONE
                         else _PAIR + OK_BYTES + encode_effect(ftype, nested[1]))
                cells.append(_PAIR + key_bytes(field, ftype) + inner)
            parts.append(list_of(cells))
        return _PAIR + parts[0] + parts[1]
    raise CrdtError(f"unsupported CRDT type {crdt_type}")
