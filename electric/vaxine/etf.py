"""Erlang external term format (``term_to_binary`` / ``binary_to_term``), sans-I/O.

Vaxine's replication port speaks nothing but ETF, and the Antidote API carries ETF blobs
(transaction descriptors, commit clocks, column values) inside protobuf bytes fields.

Python representation of Erlang terms:

==================  =====================================================
Erlang              Python
==================  =====================================================
atom                :class:`Atom` (``true``/``false``/``nil`` stay atoms)
integer             ``int`` (any size)
float               ``float``
binary              ``bytes``
tuple               ``tuple``
proper list         ``list`` (``[]`` is NIL_EXT); STRING_EXT decodes to ``list[int]``
improper list       :class:`ImproperList`
map                 ``dict`` (keys must be hashable terms)
pid                 :class:`Pid`
reference           :class:`Reference`
==================  =====================================================

The encoder picks the same tags OTP 24/25 ``term_to_binary`` does for these terms (ATOM_EXT
for latin-1 atoms, the smallest integer tag, STRING_EXT for short lists of bytes, NEW_PID_EXT,
NEWER_REFERENCE_EXT), so terms Electric builds are byte-identical to what Erlang would send.
Map entries are written in dict order (OTP sorts keys; callers building multi-key maps that
must be byte-exact should insert keys in Erlang term order).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

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

# Deeply nested input must fail cleanly rather than blow Python's recursion limit.
MAX_DEPTH = 256
# A compressed term may claim any uncompressed size; refuse absurd ones before inflating.
MAX_UNCOMPRESSED = 64 * 1024 * 1024


class ETFError(ValueError):
    """The bytes are not a valid (supported) external term."""


@dataclass(frozen=True, slots=True)
class Atom:
    name: str

    def __repr__(self) -> str:
        return f"Atom({self.name!r})"


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


TRUE = Atom("true")
FALSE = Atom("false")
NIL_ATOM = Atom("nil")


# --------------------------------------------------------------------------- encoding


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
    # bool first: it is an int subclass but must become an atom.
    if term is True or term is False:
        _encode_atom("true" if term else "false", out)
    elif isinstance(term, int):
        _encode_int(term, out)
    elif isinstance(term, bytes | bytearray | memoryview):
        data = bytes(term)
        out += struct.pack(">BI", BINARY, len(data))
        out += data
    elif isinstance(term, Atom):
        _encode_atom(term.name, out)
    elif isinstance(term, tuple):
        n = len(term)
        out += struct.pack(">BB", SMALL_TUPLE, n) if n < 256 else struct.pack(">BI", LARGE_TUPLE, n)
        for item in term:
            _encode(item, out)
    elif isinstance(term, list):
        _encode_list(term, out)
    elif isinstance(term, ImproperList):
        out += struct.pack(">BI", LIST, len(term.items))
        for item in term.items:
            _encode(item, out)
        _encode(term.tail, out)
    elif isinstance(term, dict):
        out += struct.pack(">BI", MAP, len(term))
        for key, value in term.items():
            _encode(key, out)
            _encode(value, out)
    elif isinstance(term, float):
        out += struct.pack(">Bd", NEW_FLOAT, term)
    elif isinstance(term, Pid):
        _encode_atom(term.node.name, out, prefix=bytes([NEW_PID]))
        out += struct.pack(">III", term.id, term.serial, term.creation)
    elif isinstance(term, Reference):
        out += struct.pack(">BH", NEWER_REFERENCE, len(term.ids))
        _encode_atom(term.node.name, out)
        out += struct.pack(">I", term.creation)
        for i in term.ids:
            out += struct.pack(">I", i)
    else:
        raise ETFError(f"cannot encode {type(term).__name__} as an Erlang term")


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
    if len(items) < 65536 and all(type(i) is int and 0 <= i <= 255 for i in items):
        out += struct.pack(">BH", STRING, len(items))
        out += bytes(items)
        return
    out += struct.pack(">BI", LIST, len(items))
    for item in items:
        _encode(item, out)
    out.append(NIL)


# --------------------------------------------------------------------------- decoding


def decode(data: bytes) -> Any:
    """``binary_to_term(Data)``; the whole input must be exactly one term."""
    term, end = decode_prefix(data)
    if end != len(data):
        raise ETFError(f"{len(data) - end} trailing bytes after the term")
    return term


def decode_prefix(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode one versioned term starting at ``offset``; returns (term, end offset)."""
    view = memoryview(bytes(data)) if not isinstance(data, bytes) else memoryview(data)
    if offset >= len(view) or view[offset] != VERSION:
        raise ETFError("missing version byte 131")
    if offset + 1 < len(view) and view[offset + 1] == COMPRESSED:
        return _decode_compressed(view, offset + 2)
    try:
        return _Decoder(view).term(offset + 1, 0)
    except (struct.error, IndexError) as exc:
        raise ETFError("truncated term") from exc


def _decode_compressed(view: memoryview, pos: int) -> tuple[Any, int]:
    if pos + 4 > len(view):
        raise ETFError("truncated compressed term")
    (size,) = struct.unpack_from(">I", view, pos)
    if size > MAX_UNCOMPRESSED:
        raise ETFError(f"compressed term claims {size} bytes, over the limit")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(view[pos + 4 :], size)
    except zlib.error as exc:
        raise ETFError("bad zlib data in compressed term") from exc
    if len(raw) != size or not inflater.eof:
        raise ETFError("compressed term does not inflate to its declared size")
    consumed = len(view) - len(inflater.unused_data)
    inner = memoryview(raw)
    try:
        term, end = _Decoder(inner).term(0, 0)
    except (struct.error, IndexError) as exc:
        raise ETFError("truncated term") from exc
    if end != len(raw):
        raise ETFError("trailing bytes inside compressed term")
    return term, consumed


class _Decoder:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    def _need(self, pos: int, n: int) -> None:
        # Checked before any allocation so a forged length cannot make us reserve memory.
        if n < 0 or pos + n > len(self.buf):
            raise ETFError("length field runs past the end of the input")

    def term(self, pos: int, depth: int) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise ETFError("term nested too deeply")
        buf = self.buf
        tag = buf[pos]
        pos += 1
        if tag == SMALL_INTEGER:
            return buf[pos], pos + 1
        if tag == INTEGER:
            return struct.unpack_from(">i", buf, pos)[0], pos + 4
        if tag in (ATOM, ATOM_UTF8):
            (n,) = struct.unpack_from(">H", buf, pos)
            return self._atom(pos + 2, n, tag == ATOM)
        if tag in (SMALL_ATOM, SMALL_ATOM_UTF8):
            return self._atom(pos + 1, buf[pos], tag == SMALL_ATOM)
        if tag == SMALL_TUPLE:
            return self._tuple(pos + 1, buf[pos], depth)
        if tag == LARGE_TUPLE:
            (n,) = struct.unpack_from(">I", buf, pos)
            return self._tuple(pos + 4, n, depth)
        if tag == NIL:
            return [], pos
        if tag == STRING:
            (n,) = struct.unpack_from(">H", buf, pos)
            self._need(pos + 2, n)
            return list(buf[pos + 2 : pos + 2 + n]), pos + 2 + n
        if tag == LIST:
            (n,) = struct.unpack_from(">I", buf, pos)
            return self._list(pos + 4, n, depth)
        if tag == BINARY:
            (n,) = struct.unpack_from(">I", buf, pos)
            self._need(pos + 4, n)
            return bytes(buf[pos + 4 : pos + 4 + n]), pos + 4 + n
        if tag in (SMALL_BIG, LARGE_BIG):
            if tag == SMALL_BIG:
                n, pos = buf[pos], pos + 1
            else:
                (n,), pos = struct.unpack_from(">I", buf, pos), pos + 4
            self._need(pos + 1, n)
            sign = buf[pos]
            value = int.from_bytes(buf[pos + 1 : pos + 1 + n], "little")
            return (-value if sign else value), pos + 1 + n
        if tag == MAP:
            (n,) = struct.unpack_from(">I", buf, pos)
            return self._map(pos + 4, n, depth)
        if tag == NEW_FLOAT:
            return struct.unpack_from(">d", buf, pos)[0], pos + 8
        if tag == FLOAT:
            self._need(pos, 31)
            text = bytes(buf[pos : pos + 31]).split(b"\x00", 1)[0]
            try:
                return float(text), pos + 31
            except ValueError as exc:
                raise ETFError("bad FLOAT_EXT text") from exc
        if tag in (NEW_PID, PID):
            node, pos = self._node(pos, depth)
            if tag == NEW_PID:
                pid_id, serial, creation = struct.unpack_from(">III", buf, pos)
                return Pid(node, pid_id, serial, creation), pos + 12
            pid_id, serial = struct.unpack_from(">II", buf, pos)
            return Pid(node, pid_id, serial, buf[pos + 8]), pos + 9
        if tag in (NEWER_REFERENCE, NEW_REFERENCE):
            (n,) = struct.unpack_from(">H", buf, pos)
            if n > 5:
                raise ETFError("reference with more than 5 ids")
            node, pos = self._node(pos + 2, depth)
            if tag == NEWER_REFERENCE:
                (creation,), pos = struct.unpack_from(">I", buf, pos), pos + 4
            else:
                creation, pos = buf[pos], pos + 1
            ids = struct.unpack_from(f">{n}I", buf, pos)
            return Reference(node, creation, tuple(ids)), pos + 4 * n
        if tag == NEW_PORT:
            raise ETFError("ports are not supported")
        if tag == BIT_BINARY:
            raise ETFError("bitstrings are not supported")
        raise ETFError(f"unknown term tag {tag}")

    def _atom(self, pos: int, n: int, latin1: bool) -> tuple[Atom, int]:
        self._need(pos, n)
        raw = bytes(self.buf[pos : pos + n])
        try:
            name = raw.decode("latin-1" if latin1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise ETFError("atom is not valid UTF-8") from exc
        return Atom(name), pos + n

    def _node(self, pos: int, depth: int) -> tuple[Atom, int]:
        node, pos = self.term(pos, depth + 1)
        if not isinstance(node, Atom):
            raise ETFError("pid/reference node is not an atom")
        return node, pos

    def _tuple(self, pos: int, n: int, depth: int) -> tuple[tuple, int]:
        self._need(pos, n)  # every element takes at least one byte
        items = []
        for _ in range(n):
            item, pos = self.term(pos, depth + 1)
            items.append(item)
        return tuple(items), pos

    def _list(self, pos: int, n: int, depth: int) -> tuple[Any, int]:
        self._need(pos, n + 1)
        items = []
        for _ in range(n):
            item, pos = self.term(pos, depth + 1)
            items.append(item)
        tail, pos = self.term(pos, depth + 1)
        if tail == []:
            return items, pos
        if isinstance(tail, list):
            # [a | [b, c]] is just [a, b, c]; normalise so equal terms compare equal.
            return items + tail, pos
        if isinstance(tail, ImproperList):
            return ImproperList(tuple(items) + tail.items, tail.tail), pos
        return ImproperList(tuple(items), tail), pos

    def _map(self, pos: int, n: int, depth: int) -> tuple[dict, int]:
        self._need(pos, 2 * n)
        result = {}
        for _ in range(n):
            key, pos = self.term(pos, depth + 1)
            value, pos = self.term(pos, depth + 1)
            try:
                result[key] = value
            except TypeError as exc:
                raise ETFError("map key is not hashable in Python (list or map key)") from exc
        return result, pos


# --------------------------------------------------------------------------- helpers


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
