"""pgoutput logical replication messages, protocol version 1: decode and encode, no I/O.

``decode(payload)`` turns the body of one XLogData message into a message object and
``encode(message)`` turns it back into bytes; for every well-formed payload
``encode(decode(payload)) == payload``. The same codec serves both directions: Electric
decodes what a source Postgres sends and encodes what it publishes to subscribers.

Malformed or truncated input raises :class:`ProtocolError` (and nothing else), so one bad
payload never turns into an arbitrary exception deep inside the reader. Message kinds this
protocol version does not define are returned as :class:`Unknown` (raw bytes kept) so the
caller can decide to skip them instead of stalling replication on them.

Column values in :class:`TupleData` are kept as the raw bytes Postgres sent (text format);
turning them into ``str`` needs the database encoding and is the transaction assembler's job.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime

from electric.postgres.lsn import Lsn
from electric.postgres.pgtime import from_pg_micros, to_pg_micros

__all__ = [
    "Begin",
    "Binary",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "ProtocolError",
    "Relation",
    "RelationColumn",
    "Truncate",
    "TupleData",
    "Type",
    "UNCHANGED_TOAST",
    "Unknown",
    "Update",
    "decode",
    "encode",
]


class ProtocolError(ValueError):
    """A pgoutput payload is malformed, truncated, or violates the protocol."""


class _UnchangedToast:
    """Marker for a TOASTed column Postgres did not resend because it did not change."""

    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self):
        return (_UnchangedToast, ())


UNCHANGED_TOAST = _UnchangedToast()


@dataclass(frozen=True)
class Binary:
    """A column sent in binary format (``b``); only with the ``binary`` option, never requested."""

    data: bytes


Value = bytes | Binary | _UnchangedToast | None
"""One column of a TupleData: text bytes, binary value, UNCHANGED_TOAST, or None (NULL)."""

TupleData = tuple[Value, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: Lsn
    commit_timestamp: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    lsn: Lsn
    end_lsn: Lsn
    commit_timestamp: datetime
    flags: int = 0


@dataclass(frozen=True)
class Origin:
    origin_lsn: Lsn
    name: str


@dataclass(frozen=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int = -1
    # Bit 1 = part of the replica identity ("key"); other bits are kept for round-trips.
    flags: int = 0

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


REPLICA_IDENTITIES = {"d": "default", "n": "nothing", "f": "full", "i": "index"}


@dataclass(frozen=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]

    @property
    def relation(self) -> tuple[str, str]:
        # Postgres sends "" as namespace for pg_catalog.
        return (self.namespace or "pg_catalog", self.name)


@dataclass(frozen=True)
class Type:
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True)
class Insert:
    relation_id: int
    new: TupleData


@dataclass(frozen=True)
class Update:
    relation_id: int
    new: TupleData
    # Old row under REPLICA IDENTITY FULL ('O'), or the old key when the key changed ('K').
    old: TupleData | None = None
    key: TupleData | None = None


@dataclass(frozen=True)
class Delete:
    relation_id: int
    old: TupleData | None = None  # 'O': full old row (REPLICA IDENTITY FULL)
    key: TupleData | None = None  # 'K': identity columns, others NULL


TRUNCATE_CASCADE = 1
TRUNCATE_RESTART_IDENTITY = 2


@dataclass(frozen=True)
class Truncate:
    relation_ids: tuple[int, ...]
    options: int = 0  # bit 1 CASCADE, bit 2 RESTART IDENTITY

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


@dataclass(frozen=True)
class LogicalMessage:
    """``M``: pg_logical_emit_message() output (only sent with the ``messages`` option)."""

    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes
    flags: int = field(default=-1, repr=False)  # raw flags byte; -1 means "derive"


@dataclass(frozen=True)
class Unknown:
    """A message kind protocol version 1 does not define; kept verbatim."""

    tag: bytes
    body: bytes


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | Unknown
)


# --- decoding ------------------------------------------------------------------------------


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


# --- encoding ------------------------------------------------------------------------------


def _b_string(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"string contains NUL: {text!r}")
    return raw + b"\0"


def _b_timestamp(ts: datetime) -> bytes:
    return struct.pack(">q", to_pg_micros(ts))  # naive datetimes are taken to be UTC


def _b_lsn(lsn: int) -> bytes:
    return struct.pack(">Q", int(lsn))


def _b_typmod(value: int) -> bytes:
    # -1 ("no modifier") may arrive as 4294967295 from unsigned sources: same bytes.
    if value < 0:
        return struct.pack(">i", value)
    return struct.pack(">I", value)


_PACK_U16 = struct.Struct(">H").pack
_PACK_U32 = struct.Struct(">I").pack


def _b_tuple(values: TupleData) -> bytes:
    parts = [_PACK_U16(len(values))]
    append = parts.append
    for value in values:
        if value is None:
            append(b"n")
        elif value is UNCHANGED_TOAST:
            append(b"u")
        elif isinstance(value, Binary):
            append(b"b")
            append(_PACK_U32(len(value.data)))
            append(value.data)
        else:
            if isinstance(value, str):
                value = value.encode("utf-8")
            elif not isinstance(value, bytes):
                value = bytes(value)
            append(b"t")
            append(_PACK_U32(len(value)))
            append(value)
    return b"".join(parts)


def encode(message: Message) -> bytes:
    """Encode one message; ``encode(decode(b)) == b`` for every well-formed ``b``."""
    if type(message) is Insert:  # the commonest by far: every upsert Electric sends
        return b"I" + _PACK_U32(message.relation_id) + b"N" + _b_tuple(message.new)
    if isinstance(message, Begin):
        return (
            b"B"
            + _b_lsn(message.final_lsn)
            + _b_timestamp(message.commit_timestamp)
            + struct.pack(">I", message.xid)
        )
    if isinstance(message, Commit):
        return (
            b"C"
            + struct.pack(">B", message.flags)
            + _b_lsn(message.lsn)
            + _b_lsn(message.end_lsn)
            + _b_timestamp(message.commit_timestamp)
        )
    if isinstance(message, Origin):
        return b"O" + _b_lsn(message.origin_lsn) + _b_string(message.name)
    if isinstance(message, Relation):
        if message.replica_identity not in REPLICA_IDENTITIES:
            raise ValueError(f"unknown replica identity {message.replica_identity!r}")
        parts = [
            b"R",
            struct.pack(">I", message.relation_id),
            _b_string(message.namespace),
            _b_string(message.name),
            message.replica_identity.encode("ascii"),
            struct.pack(">H", len(message.columns)),
        ]
        for col in message.columns:
            parts.append(struct.pack(">B", col.flags))
            parts.append(_b_string(col.name))
            parts.append(struct.pack(">I", col.type_oid))
            parts.append(_b_typmod(col.type_modifier))
        return b"".join(parts)
    if isinstance(message, Type):
        return (
            b"Y"
            + struct.pack(">I", message.type_oid)
            + _b_string(message.namespace)
            + _b_string(message.name)
        )
    if isinstance(message, Insert):
        return b"I" + struct.pack(">I", message.relation_id) + b"N" + _b_tuple(message.new)
    if isinstance(message, Update):
        out = b"U" + struct.pack(">I", message.relation_id)
        # Same preference as Postgres: a changed key is sent as 'K', else the old row as 'O'.
        if message.key is not None:
            out += b"K" + _b_tuple(message.key)
        elif message.old is not None:
            out += b"O" + _b_tuple(message.old)
        return out + b"N" + _b_tuple(message.new)
    if isinstance(message, Delete):
        out = b"D" + struct.pack(">I", message.relation_id)
        if message.old is not None:
            return out + b"O" + _b_tuple(message.old)
        if message.key is not None:
            return out + b"K" + _b_tuple(message.key)
        raise ValueError("Delete needs an old row or a key")
    if isinstance(message, Truncate):
        ids = message.relation_ids
        return (
            b"T"
            + struct.pack(">IB", len(ids), message.options)
            + struct.pack(f">{len(ids)}I", *ids)
        )
    if isinstance(message, LogicalMessage):
        flags = message.flags if message.flags >= 0 else int(message.transactional)
        return (
            b"M"
            + struct.pack(">B", flags)
            + _b_lsn(message.lsn)
            + _b_string(message.prefix)
            + struct.pack(">I", len(message.content))
            + message.content
        )
    if isinstance(message, Unknown):
        return message.tag + message.body
    raise TypeError(f"not a pgoutput message: {message!r}")
