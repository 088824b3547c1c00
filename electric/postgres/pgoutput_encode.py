"""pgoutput encoding: messages into the bytes Electric publishes to subscribers, no I/O.

``encode(message)`` turns a message object of ``pgoutput.py`` into the body of one XLogData
message; ``encode(decode(b)) == b`` for every well-formed ``b`` (``pgoutput_decode.py``).
"""

from __future__ import annotations

import struct
from datetime import datetime

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
    Relation,
    Truncate,
    TupleData,
    Type,
    Unknown,
    Update,
)
from electric.postgres.pgtime import to_pg_micros

__all__ = ["encode"]


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
