"""``term_to_binary``: Python terms to ETF bytes, and the pieces to build terms by hand.

The encoder picks the same tags OTP 24/25 ``term_to_binary`` does for these terms (ATOM_EXT
for latin-1 atoms, the smallest integer tag, STRING_EXT for short lists of bytes, NEW_PID_EXT,
NEWER_REFERENCE_EXT), so terms Electric builds are byte-identical to what Erlang would send.
Map entries are written in dict order (OTP sorts keys; callers building multi-key maps that
must be byte-exact should insert keys in Erlang term order).

Hot paths that already hold encoded parts (the server's commit path, the WAL stream's frames)
splice them together with the builders below (:func:`binary`, :func:`integer`,
:func:`tuple_head`, :func:`list_of`...) instead of writing tag bytes themselves.
"""

from __future__ import annotations

import struct
from typing import Any

from electric.vaxine.etf.terms import (
    ATOM,
    ATOM_UTF8,
    BINARY,
    INTEGER,
    LARGE_BIG,
    LARGE_TUPLE,
    LIST,
    MAP,
    NEW_FLOAT,
    NEW_PID,
    NEWER_REFERENCE,
    NIL,
    SMALL_ATOM_UTF8,
    SMALL_BIG,
    SMALL_INTEGER,
    SMALL_TUPLE,
    STRING,
    VERSION,
    Atom,
    ETFError,
    ImproperList,
    Pid,
    RawTerm,
    Reference,
)

VERSION_BYTE = bytes((VERSION,))
NIL_BYTES = bytes((NIL,))
_BINARY_TAG = bytes((BINARY,))
_LIST_TAG = bytes((LIST,))
_pack_u32 = struct.Struct(">I").pack


def tuple_head(n: int) -> bytes:
    """The bytes that open an ``n``-tuple; its ``n`` encoded elements follow."""
    return bytes((SMALL_TUPLE, n)) if n < 256 else struct.pack(">BI", LARGE_TUPLE, n)


def list_head(n: int) -> bytes:
    """The bytes that open a list of ``n`` elements; the elements and a tail follow
    (:data:`NIL_BYTES` for a proper list, any term for an improper one)."""
    return _LIST_TAG + _pack_u32(n)


def list_of(items: list[bytes]) -> bytes:
    """The proper list of the already encoded ``items``."""
    if not items:
        return NIL_BYTES
    return _LIST_TAG + _pack_u32(len(items)) + b"".join(items) + NIL_BYTES


def binary(data: bytes) -> bytes:
    """``data`` as a binary term (body only)."""
    return _BINARY_TAG + _pack_u32(len(data)) + data


def integer(n: int) -> bytes:
    """``n`` as an integer term (body only): what :func:`encode_body` gives, faster for the
    small counters and µs timestamps of the commit path."""
    if 0 <= n <= 255:
        return bytes((SMALL_INTEGER, n))
    if 2**31 <= n < 2**64:  # µs timestamps: SMALL_BIG_EXT, positive
        size = (n.bit_length() + 7) // 8
        return bytes((SMALL_BIG, size, 0)) + n.to_bytes(size, "little")
    out = bytearray()
    _encode_int(n, out)
    return bytes(out)



def encode(term: Any) -> bytes:
    """``term_to_binary(Term)``: version byte followed by the term."""
    out = bytearray([VERSION])
    _encode(term, out)
    return bytes(out)


def encode_body(term: Any) -> bytes:
    """The term without the version byte, for splicing into a larger term."""
    out = bytearray()
    _encode(term, out)
    return bytes(out)


def _encode(term: Any, out: bytearray) -> None:
    encoder = _ENCODERS.get(type(term))
    if encoder is not None:
        encoder(term, out)
        return
    # Subclasses (and bool, which must become an atom rather than an int).
    for base, encoder in _ENCODER_BASES:
        if isinstance(term, base):
            encoder(term, out)
            return
    raise ETFError(f"cannot encode {type(term).__name__} as an Erlang term")


def _enc_bool(term: bool, out: bytearray) -> None:
    out += _atom_bytes("true" if term else "false")


def _enc_bytes(term, out: bytearray) -> None:
    data = bytes(term)
    out += _BINARY_HEAD.pack(BINARY, len(data))
    out += data


def _enc_atom(term: Atom, out: bytearray) -> None:
    out += _atom_bytes(term)


def _enc_tuple(term: tuple, out: bytearray) -> None:
    n = len(term)
    if n < 256:
        out.append(SMALL_TUPLE)
        out.append(n)
    else:
        out += struct.pack(">BI", LARGE_TUPLE, n)
    _encode_items(term, out)


def _encode_items(items, out: bytearray) -> None:
    # The commonest children are inlined: this loop runs for every node of every state.
    for item in items:
        kind = type(item)
        if kind is bytes:
            out += _BINARY_HEAD.pack(BINARY, len(item))
            out += item
        elif kind is Atom:
            cached = _atom_cache.get(item)
            out += cached if cached is not None else _atom_bytes(item)
        elif kind is list and not item:
            out.append(NIL)
        elif kind is int and 0 <= item <= 255:
            out.append(SMALL_INTEGER)
            out.append(item)
        else:
            encoder = _ENCODERS.get(kind)
            if encoder is not None:
                encoder(item, out)
            else:
                _encode(item, out)


def _enc_improper(term: ImproperList, out: bytearray) -> None:
    out += _BINARY_HEAD.pack(LIST, len(term.items))
    _encode_items(term.items, out)
    _encode_items((term.tail,), out)


def _enc_map(term: dict, out: bytearray) -> None:
    out += _BINARY_HEAD.pack(MAP, len(term))
    for key, value in term.items():
        _encode(key, out)
        _encode(value, out)


def _enc_float(term: float, out: bytearray) -> None:
    out += struct.pack(">Bd", NEW_FLOAT, term)


def _enc_pid(term: Pid, out: bytearray) -> None:
    out.append(NEW_PID)
    out += _atom_bytes(term.node.name)
    out += struct.pack(">III", term.id, term.serial, term.creation)


def _enc_ref(term: Reference, out: bytearray) -> None:
    out += struct.pack(">BH", NEWER_REFERENCE, len(term.ids))
    out += _atom_bytes(term.node.name)
    out += struct.pack(">I", term.creation)
    for i in term.ids:
        out += struct.pack(">I", i)


def _enc_raw(term: RawTerm, out: bytearray) -> None:
    out += term.body


_BINARY_HEAD = struct.Struct(">BI")
_atom_cache: dict[str, bytes] = {}


def _atom_bytes(name: str) -> bytes:
    cached = _atom_cache.get(name)
    if cached is None:
        buf = bytearray()
        _encode_atom(name, buf)
        cached = bytes(buf)
        if len(_atom_cache) < 10_000:
            _atom_cache[name] = cached
    return cached


def _encode_atom(name: str, out: bytearray, prefix: bytes = b"") -> None:
    out += prefix
    try:
        latin = name.encode("latin-1")
    except UnicodeEncodeError:
        latin = None
    if latin is not None and len(latin) <= 255:
        # OTP 24/25 write latin-1 atoms as ATOM_EXT; the fixtures were captured from OTP 25.
        out += struct.pack(">BH", ATOM, len(latin))
        out += latin
        return
    utf8 = name.encode("utf-8")
    if len(utf8) < 256:
        out += struct.pack(">BB", SMALL_ATOM_UTF8, len(utf8))
    else:
        out += struct.pack(">BH", ATOM_UTF8, len(utf8))
    out += utf8


def _encode_int(n: int, out: bytearray) -> None:
    if 0 <= n <= 255:
        out += struct.pack(">BB", SMALL_INTEGER, n)
    elif -(2**31) <= n < 2**31:
        out += struct.pack(">Bi", INTEGER, n)
    else:
        sign = 1 if n < 0 else 0
        magnitude = -n if n < 0 else n
        digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
        if len(digits) < 256:
            out += struct.pack(">BBB", SMALL_BIG, len(digits), sign)
        else:
            out += struct.pack(">BIB", LARGE_BIG, len(digits), sign)
        out += digits


def _encode_list(items: list, out: bytearray) -> None:
    if not items:
        out.append(NIL)
        return
    # term_to_binary packs a list of bytes as STRING_EXT (e.g. "abc" in Erlang source).
    if type(items[0]) is int and len(items) < 65536 and all(
            type(i) is int and 0 <= i <= 255 for i in items):
        out += struct.pack(">BH", STRING, len(items))
        out += bytes(items)
        return
    out += _BINARY_HEAD.pack(LIST, len(items))
    _encode_items(items, out)
    out.append(NIL)


_ENCODERS = {
    bool: _enc_bool,
    int: _encode_int,
    bytes: _enc_bytes,
    Atom: _enc_atom,
    tuple: _enc_tuple,
    list: _encode_list,
    ImproperList: _enc_improper,
    dict: _enc_map,
    float: _enc_float,
    Pid: _enc_pid,
    Reference: _enc_ref,
    RawTerm: _enc_raw,
}
_ENCODER_BASES = [
    (bool, _enc_bool),
    (int, _encode_int),
    (bytes | bytearray | memoryview, _enc_bytes),
    (tuple, _enc_tuple),
    (list, _encode_list),
    (dict, _enc_map),
    (float, _enc_float),
]
