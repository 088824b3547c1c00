"""``binary_to_term``: ETF bytes to Python terms, bounded against hostile input."""

from __future__ import annotations

import struct
import zlib
from typing import Any

from electric.limits import DEFAULT
from electric.vaxine.etf.terms import (
    ATOM,
    ATOM_UTF8,
    BINARY,
    BIT_BINARY,
    COMPRESSED,
    FLOAT,
    INTEGER,
    LARGE_BIG,
    LARGE_TUPLE,
    LIST,
    MAP,
    NEW_FLOAT,
    NEW_PID,
    NEW_PORT,
    NEW_REFERENCE,
    NEWER_REFERENCE,
    NIL,
    PID,
    SMALL_ATOM,
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
    Reference,
)

# Read once: the decoder is a set of plain functions on the hot path (see VaxineLimits).
MAX_DEPTH = DEFAULT.vaxine.etf_max_depth
MAX_UNCOMPRESSED = DEFAULT.vaxine.etf_max_uncompressed

def decode(data: bytes) -> Any:
    """``binary_to_term(Data)``; the whole input must be exactly one term."""
    term, end = decode_prefix(data)
    if end != len(data):
        raise ETFError(f"{len(data) - end} trailing bytes after the term")
    return term


def decode_at(data: bytes, pos: int) -> tuple[Any, int]:
    """Decode one term *body* (no version byte) at ``pos`` inside a larger term's bytes;
    returns (term, end offset). Lets callers decode a frame's head and handle its tail
    differently (see :class:`EncodingMemo`)."""
    try:
        term, end = _dec(data, pos, 0)
    except (struct.error, IndexError) as exc:
        raise ETFError("truncated term") from exc
    if end > len(data):
        raise ETFError("length field runs past the end of the input")
    return term, end


def decode_prefix(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode one versioned term starting at ``offset``; returns (term, end offset)."""
    view = data if isinstance(data, bytes) else bytes(data)
    if offset >= len(view) or view[offset] != VERSION:
        raise ETFError("missing version byte 131")
    if offset + 1 < len(view) and view[offset + 1] == COMPRESSED:
        return _decode_compressed(view, offset + 2)
    try:
        term, end = _dec(view, offset + 1, 0)
    except (struct.error, IndexError) as exc:
        raise ETFError("truncated term") from exc
    if end > len(view):  # a binary (or atom, bignum) ran past the end: see _dec
        raise ETFError("length field runs past the end of the input")
    return term, end


def _decode_compressed(view: bytes, pos: int) -> tuple[Any, int]:
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
    inner = bytes(raw)
    try:
        term, end = _dec(inner, 0, 0)
    except (struct.error, IndexError) as exc:
        raise ETFError("truncated term") from exc
    if end != len(raw):
        raise ETFError("truncated or trailing bytes inside compressed term")
    return term, consumed


_U32 = struct.Struct(">I").unpack_from
_I32 = struct.Struct(">i").unpack_from
_from_bytes = int.from_bytes
_atom_by_bytes: dict[bytes, Atom] = {}


def _new_atom(raw: bytes) -> Atom:
    atom = Atom(raw.decode("latin-1"))
    if len(_atom_by_bytes) < 10_000:
        _atom_by_bytes[raw] = atom
    return atom


# The decoder below runs for every node of every streamed transaction (~275 nodes per row),
# so it trades elegance for fewer Python calls:
# * the tags that fill Vaxine frames are handled inline, and inside the tuple/list loops the
#   leaf children (binaries, atoms, small ints, bignums, []) are decoded without a call;
# * 2-tuples (70% of all containers: dict keys {Field, Type}, {ok, E}, {Ts, V}) skip the
#   temporary list;
# * lengths of binaries/atoms/bignums are not checked one by one: a slice past the end just
#   comes back short, and the next read past the end raises IndexError (→ "truncated"),
#   or :func:`decode_prefix` finds the end position past the input. Counts that would make
#   us allocate (list lengths) are still checked against the bytes left before looping.


def _dec(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """Decode one term at ``pos``; returns (term, end). Rare tags go to _Decoder."""
    tag = buf[pos]
    if tag == SMALL_TUPLE or tag == LIST:
        if depth > MAX_DEPTH:
            raise ETFError("term nested too deeply")
        depth += 1
        if tag == SMALL_TUPLE:
            n = buf[pos + 1]
            pos += 2
            if n == 2:
                t = buf[pos]
                if t == BINARY:
                    end = pos + 5 + _U32(buf, pos + 1)[0]
                    first = buf[pos + 5 : end]
                    pos = end
                else:
                    first, pos = _dec(buf, pos, depth)
                if buf[pos] == ATOM:
                    end = pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2])
                    raw = buf[pos + 3 : end]
                    second = _atom_by_bytes.get(raw)
                    if second is None:
                        second = _new_atom(raw)
                    return (first, second), end
                second, pos = _dec(buf, pos, depth)
                return (first, second), pos
        else:
            n = _U32(buf, pos + 1)[0]
            pos += 5
            if pos + n >= len(buf):  # n elements and a tail, at least a byte each
                raise ETFError("length field runs past the end of the input")
        items = []
        append = items.append
        for _ in range(n):
            t = buf[pos]
            if t == BINARY:
                end = pos + 5 + _U32(buf, pos + 1)[0]
                append(buf[pos + 5 : end])
                pos = end
            elif t == ATOM:
                end = pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2])
                raw = buf[pos + 3 : end]
                atom = _atom_by_bytes.get(raw)
                append(atom if atom is not None else _new_atom(raw))
                pos = end
            elif t == SMALL_INTEGER:
                append(buf[pos + 1])
                pos += 2
            elif t == NIL:
                append([])
                pos += 1
            elif t == SMALL_BIG:
                end = pos + 3 + buf[pos + 1]
                value = _from_bytes(buf[pos + 3 : end], "little")
                append(-value if buf[pos + 2] else value)
                pos = end
            else:
                item, pos = _dec(buf, pos, depth)
                append(item)
        if tag == SMALL_TUPLE:
            return tuple(items), pos
        if buf[pos] == NIL:
            return items, pos + 1
        tail, pos = _dec(buf, pos, depth)
        if isinstance(tail, list):
            return items + tail, pos
        if isinstance(tail, ImproperList):
            return ImproperList(tuple(items) + tail.items, tail.tail), pos
        return ImproperList(tuple(items), tail), pos
    if tag == BINARY:
        end = pos + 5 + _U32(buf, pos + 1)[0]
        return buf[pos + 5 : end], end
    if tag == ATOM:
        end = pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2])
        raw = buf[pos + 3 : end]
        atom = _atom_by_bytes.get(raw)
        return (atom if atom is not None else _new_atom(raw)), end
    if tag == NIL:
        return [], pos + 1
    if tag == SMALL_INTEGER:
        return buf[pos + 1], pos + 2
    if tag == SMALL_BIG:
        end = pos + 3 + buf[pos + 1]
        value = _from_bytes(buf[pos + 3 : end], "little")
        return (-value if buf[pos + 2] else value), end
    if tag == INTEGER:
        return _I32(buf, pos + 1)[0], pos + 5
    if depth > MAX_DEPTH:
        raise ETFError("term nested too deeply")
    return _Decoder(buf).term(pos, depth)


class _Decoder:
    __slots__ = ("buf",)

    def __init__(self, buf: bytes):
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
        node, pos = _dec(self.buf, pos, depth + 1)
        if not isinstance(node, Atom):
            raise ETFError("pid/reference node is not an atom")
        return node, pos

    def _tuple(self, pos: int, n: int, depth: int) -> tuple[tuple, int]:
        self._need(pos, n)  # every element takes at least one byte
        items = []
        for _ in range(n):
            item, pos = _dec(self.buf, pos, depth + 1)
            items.append(item)
        return tuple(items), pos

    def _list(self, pos: int, n: int, depth: int) -> tuple[Any, int]:
        self._need(pos, n + 1)
        items = []
        for _ in range(n):
            item, pos = _dec(self.buf, pos, depth + 1)
            items.append(item)
        tail, pos = _dec(self.buf, pos, depth + 1)
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
            key, pos = _dec(self.buf, pos, depth + 1)
            value, pos = _dec(self.buf, pos, depth + 1)
            try:
                result[key] = value
            except TypeError as exc:
                raise ETFError("map key is not hashable in Python (list or map key)") from exc
        return result, pos
