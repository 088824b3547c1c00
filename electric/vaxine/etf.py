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
from collections import deque
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


# --------------------------------------------------------------------------- encoding

VERSION_BYTE = bytes((VERSION,))


def tuple_head(n: int) -> bytes:
    """The bytes that open an ``n``-tuple; its ``n`` encoded elements follow."""
    return bytes((SMALL_TUPLE, n)) if n < 256 else struct.pack(">BI", LARGE_TUPLE, n)



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


# --------------------------------------------------------------------------- decoding


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


# --------------------------------------------------------------------------- memo


class EncodingMemo:
    """Terms this process encoded itself, looked up by their encoded bytes.

    The embedded Vaxine and its stream readers usually share a process: every committed
    transaction is encoded once by the store and decoded again by each WAL stream client,
    and decoding is by far the costlier half (pure Python, ~275 nodes per row). A producer
    that still holds the Python values registers ``body → build`` where ``build()`` returns
    exactly ``decode_at(body, 0)[0]`` (tests check this for every kind of term it
    registers); a consumer holding bytes received from the wire asks :meth:`recall`
    first. Keys are the exact bytes, so a hit can only return what decoding those bytes
    would: the wire format is untouched, and bytes from anywhere else simply miss.

    Bounded by the total size of the registered encodings (oldest dropped first). Live
    readers fetch a commit within milliseconds, so the budget is small on purpose: every
    entry keeps its effects alive, and a large population of long-lived containers makes
    CPython's full collections costly (16 MiB made 8 writers + 2 live readers ~25% slower
    than 2 MiB). A reader further behind simply decodes. Terms handed out are shared with
    the producer: treat them as read-only.
    """

    def __init__(self, max_bytes: int = 2 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._entries: dict[bytes, Any] = {}
        # Age order kept apart: popping a plain dict's oldest key via next(iter(...)) gets
        # slower with every deletion at its front (it skips the dead slots).
        self._order: deque[bytes] = deque()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def remember(self, body: bytes, build: Any) -> None:
        """Register ``build`` (a zero-argument callable) as the decoder of ``body``."""
        if len(body) > self.max_bytes or body in self._entries:
            return
        self._entries[body] = build
        self._order.append(body)
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            oldest = self._order.popleft()
            del self._entries[oldest]
            self._bytes -= len(oldest)

    def recall(self, body: bytes | memoryview) -> tuple[bool, Any]:
        """``(True, term)`` if ``body`` was registered, else ``(False, None)``.

        ``body`` may be a memoryview slice of a received frame (hashed without copying).
        """
        build = self._entries.get(body)
        if build is None:
            self.misses += 1
            return False, None
        self.hits += 1
        return True, build()

    def clear(self) -> None:
        self._entries.clear()
        self._order.clear()
        self._bytes = 0


memo = EncodingMemo()
"""Process-wide memo shared by the embedded store (producer) and the stream (consumer)."""


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
