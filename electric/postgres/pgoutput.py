"""pgoutput logical replication messages, protocol version 1: the vocabulary, no I/O.

The message types shared by both directions: ``pgoutput_decode.decode`` turns the body of one
XLogData message from a source Postgres into one of these, ``pgoutput_encode.encode`` turns
one into the bytes Electric publishes to subscribers; for every well-formed payload
``encode(decode(payload)) == payload``.

Malformed or truncated input raises :class:`ProtocolError` (and nothing else), so one bad
payload never turns into an arbitrary exception deep inside the reader. Message kinds this
protocol version does not define are returned as :class:`Unknown` (raw bytes kept) so the
caller can decide to skip them instead of stalling replication on them.

Column values in :class:`TupleData` are kept as the raw bytes Postgres sent (text format);
turning them into ``str`` needs the database encoding and is the transaction assembler's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from electric.postgres.lsn import Lsn

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
