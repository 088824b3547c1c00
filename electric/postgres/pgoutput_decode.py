"""pgoutput decoding: the bytes a source Postgres sends into messages, no I/O.

``decode(payload)`` turns the body of one XLogData message into a message object of
``pgoutput.py``; ``text_record`` is the row fast path of the transaction assembler (a tuple
straight into a record). Malformed or truncated input raises ``pgoutput.ProtocolError`` and
nothing else; lengths are checked before anything is allocated.
"""

from __future__ import annotations

import struct
from datetime import datetime

from electric.postgres.lsn import Lsn
from electric.postgres.pgoutput import (
    REPLICA_IDENTITIES,
    UNCHANGED_TOAST,
    Begin,
    Binary,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    ProtocolError,
    Relation,
    RelationColumn,
    Truncate,
    TupleData,
    Type,
    Unknown,
    Update,
    Value,
)
from electric.postgres.pgtime import from_pg_micros

__all__ = ["decode", "text_record"]


class _Reader:
    """Cursor over a payload; every read checks bounds and raises ProtocolError."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(
                f"{self.what}: truncated (need {n} bytes at offset {self.pos}, "
                f"have {len(self.data) - self.pos})"
            )

    def take(self, n: int) -> bytes:
        self._need(n)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        self._need(1)
        b = self.data[self.pos]
        self.pos += 1
        return b

    def char(self) -> str:
        return chr(self.byte())

    def int16u(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def int32u(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def int32s(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def int64s(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def lsn(self) -> Lsn:
        return Lsn(struct.unpack(">Q", self.take(8))[0])

    def timestamp(self) -> datetime:
        micros = self.int64s()
        try:
            return from_pg_micros(micros)
        except OverflowError:
            raise ProtocolError(f"{self.what}: timestamp out of range ({micros} us)") from None

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError(f"{self.what}: unterminated string at offset {self.pos}")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        # surrogateescape: identifiers in a non-UTF-8 database still round-trip byte-exactly.
        return raw.decode("utf-8", "surrogateescape")

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(
                f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes"
            )


_U16_AT = struct.Struct(">H").unpack_from
_S32_AT = struct.Struct(">i").unpack_from


def _tuple(r: _Reader) -> TupleData:
    # The hottest decode path (every row of every change): reads the buffer directly instead
    # of through _Reader's per-field methods, with the same bounds checks and errors.
    data, pos, size = r.data, r.pos, len(r.data)
    if pos + 2 > size:
        r._need(2)
    (ncols,) = _U16_AT(data, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    for i in range(ncols):
        if pos >= size:
            r.pos = pos
            r._need(1)
        kind = data[pos]
        pos += 1
        if kind == 0x74 or kind == 0x62:  # t, b
            if pos + 4 > size:
                r.pos = pos
                r._need(4)
            (length,) = _S32_AT(data, pos)
            pos += 4
            if length < 0:
                raise ProtocolError(f"{r.what}: negative length {length} for column {i}")
            end = pos + length
            if end > size:  # bounds-checked before any allocation
                r.pos = pos
                r._need(length)
            chunk = data[pos:end]
            pos = end
            append(chunk if kind == 0x74 else Binary(chunk))
        elif kind == 0x6E:  # n
            append(None)
        elif kind == 0x75:  # u
            append(UNCHANGED_TOAST)
        else:
            raise ProtocolError(f"{r.what}: unknown column kind {kind:#04x} for column {i}")
    r.pos = pos
    return tuple(values)


_U32_AT = struct.Struct(">I").unpack_from


def text_record(data: bytes, pos: int, names: tuple[str, ...],
                encoding: str) -> tuple[dict[str, str | None], int] | None:
    """The tuple at ``pos`` straight into a record (column → text, ``None`` for NULL,
    unchanged TOAST columns left out) and the offset after it; the row fast path of
    :class:`~electric.postgres.assembler.TransactionAssembler`, with no TupleData, bytes
    chunks or message object in between.

    Returns ``None`` for anything that is not a plain, well-formed text tuple of exactly
    ``names`` columns (binary values, bad lengths, invalid text, truncation): the caller then
    decodes the message with :func:`decode`, which raises the precise error or handles the
    unusual case, so both paths agree by construction."""
    size = len(data)
    if pos + 2 > size or _U16_AT(data, pos)[0] != len(names):
        return None
    pos += 2
    record: dict[str, str | None] = {}
    try:
        for name in names:
            kind = data[pos]
            if kind == 0x74:  # t
                (length,) = _S32_AT(data, pos + 1)
                pos += 5
                end = pos + length
                if length < 0 or end > size:
                    return None
                record[name] = data[pos:end].decode(encoding)
                pos = end
            elif kind == 0x6E:  # n
                record[name] = None
                pos += 1
            elif kind == 0x75:  # u: unchanged TOAST, never a value
                pos += 1
            else:
                return None
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return record, pos


def _decode_begin(r: _Reader) -> Begin:
    return Begin(final_lsn=r.lsn(), commit_timestamp=r.timestamp(), xid=r.int32u())


def _decode_commit(r: _Reader) -> Commit:
    flags = r.byte()
    return Commit(lsn=r.lsn(), end_lsn=r.lsn(), commit_timestamp=r.timestamp(), flags=flags)


def _decode_origin(r: _Reader) -> Origin:
    return Origin(origin_lsn=r.lsn(), name=r.string())


def _decode_relation(r: _Reader) -> Relation:
    relation_id = r.int32u()
    namespace = r.string()
    name = r.string()
    identity = r.char()
    if identity not in REPLICA_IDENTITIES:
        raise ProtocolError(f"Relation: unknown replica identity {identity!r}")
    ncols = r.int16u()
    columns = []
    for _ in range(ncols):
        flags = r.byte()
        col_name = r.string()
        columns.append(
            RelationColumn(
                name=col_name, type_oid=r.int32u(), type_modifier=r.int32s(), flags=flags
            )
        )
    return Relation(relation_id, namespace, name, identity, tuple(columns))


def _decode_type(r: _Reader) -> Type:
    return Type(type_oid=r.int32u(), namespace=r.string(), name=r.string())


def _decode_insert(r: _Reader) -> Insert:
    relation_id = r.int32u()
    marker = r.char()
    if marker != "N":
        raise ProtocolError(f"Insert: expected 'N' before the new tuple, got {marker!r}")
    return Insert(relation_id, _tuple(r))


def _decode_update(r: _Reader) -> Update:
    relation_id = r.int32u()
    marker = r.char()
    old = key = None
    if marker in ("O", "K"):
        data = _tuple(r)
        if marker == "O":
            old = data
        else:
            key = data
        marker = r.char()
    if marker != "N":
        raise ProtocolError(f"Update: expected 'N' before the new tuple, got {marker!r}")
    return Update(relation_id, _tuple(r), old=old, key=key)


def _decode_delete(r: _Reader) -> Delete:
    relation_id = r.int32u()
    marker = r.char()
    if marker == "O":
        return Delete(relation_id, old=_tuple(r))
    if marker == "K":
        return Delete(relation_id, key=_tuple(r))
    raise ProtocolError(f"Delete: expected 'O' or 'K', got {marker!r}")


def _decode_truncate(r: _Reader) -> Truncate:
    count = r.int32u()
    options = r.byte()
    # Check the declared count against what is there before building anything.
    r._need(count * 4)
    ids = struct.unpack(f">{count}I", r.take(count * 4))
    return Truncate(tuple(ids), options)


def _decode_message(r: _Reader) -> LogicalMessage:
    flags = r.byte()
    lsn = r.lsn()
    prefix = r.string()
    length = r.int32u()
    content = r.take(length)
    return LogicalMessage(bool(flags & 1), lsn, prefix, content, flags)


_DECODERS = {
    b"B": ("Begin", _decode_begin),
    b"C": ("Commit", _decode_commit),
    b"O": ("Origin", _decode_origin),
    b"R": ("Relation", _decode_relation),
    b"Y": ("Type", _decode_type),
    b"I": ("Insert", _decode_insert),
    b"U": ("Update", _decode_update),
    b"D": ("Delete", _decode_delete),
    b"T": ("Truncate", _decode_truncate),
    b"M": ("Message", _decode_message),
}


def decode(payload: bytes | bytearray | memoryview) -> Message:
    """Decode one pgoutput message (the XLogData body). Raises ProtocolError on bad input."""
    data = bytes(payload)
    if not data:
        raise ProtocolError("empty pgoutput message")
    tag = data[:1]
    entry = _DECODERS.get(tag)
    if entry is None:
        return Unknown(tag, data[1:])
    what, decoder = entry
    r = _Reader(data, what)
    r.pos = 1
    try:
        message = decoder(r)
    except ProtocolError:
        raise
    except (struct.error, ValueError, OverflowError) as exc:  # defensive: never leak these
        raise ProtocolError(f"{what}: {exc}") from None
    r.end()
    return message
