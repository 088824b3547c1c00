"""The SatOpLog codec: Satellite operations ↔ :mod:`electric.changes`, sans-I/O.

Incoming, :class:`IncomingTransaction` assembles a client's ``SatTransOp`` stream (begin,
row operations, commit) into one :class:`~electric.changes.Transaction`, built only at the
commit so the transaction is never changed after it exists. Outgoing, :func:`change_op` and
:func:`relation_message` build the operations and announcements a client receives (the
session decides which, :mod:`electric.satellite.outgoing` when). Rows travel as the Postgres
text form of each column, in the order of the table's columns (docs/protocols.md §1.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from electric.changes import (
    Change,
    DeletedRecord,
    NewRecord,
    Record,
    Transaction,
    UpdatedRecord,
)
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ProtocolViolation(Exception):
    """Raised inside handlers; turned into ``SatErrorResp{code}`` + close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class ClientRelation:
    """A table as the client announced it with ``SatRelation`` (its column order)."""

    schema: str
    table: str
    columns: list[str]


@dataclass
class IncomingTransaction:
    """A client transaction between its begin and its commit."""

    lsn: bytes
    commit_timestamp: datetime
    origin: str | None
    changes: list[Change] = field(default_factory=list)

    def build(self) -> Transaction:
        return Transaction(changes=self.changes, commit_timestamp=self.commit_timestamp,
                           origin=self.origin, publication="", lsn=self.lsn)


def apply_op(op: pb.SatTransOp, open_tx: IncomingTransaction | None,
             relations: dict[int, ClientRelation],
             origin: str | None) -> tuple[IncomingTransaction | None, Transaction | None]:
    """One client operation: returns the transaction still open after it, and the finished
    transaction when ``op`` was its commit. Raises :class:`ProtocolViolation`."""
    kind = op.WhichOneof("op")
    if kind is None:
        raise ProtocolViolation(frames.INVALID_REQUEST, "empty SatTransOp")
    if kind == "begin":
        if open_tx is not None:
            raise ProtocolViolation(frames.INVALID_REQUEST, "begin inside an open transaction")
        if not op.begin.lsn:
            raise ProtocolViolation(frames.INVALID_REQUEST, "begin with an empty lsn")
        return IncomingTransaction(bytes(op.begin.lsn),
                                   ms_to_datetime(op.begin.commit_timestamp), origin), None
    if open_tx is None:
        raise ProtocolViolation(frames.INVALID_REQUEST, f"{kind} outside a transaction")
    if kind == "commit":
        return None, open_tx.build()
    if kind == "insert":
        rel = _client_relation(relations, op.insert.relation_id)
        if not op.insert.row_data:
            raise ProtocolViolation(frames.INVALID_REQUEST, "insert with empty row_data")
        open_tx.changes.append(
            NewRecord((rel.schema, rel.table), zip_record(rel, op.insert.row_data)))
    elif kind == "update":
        rel = _client_relation(relations, op.update.relation_id)
        if not op.update.row_data:
            raise ProtocolViolation(frames.INVALID_REQUEST, "update with empty row_data")
        # The old row is what per-column merge compares with, so it is only taken when it
        # has a value for every column: clients leave NULL columns out of old_row_data,
        # which shifts the rest, and a shifted old row could hide a real change.
        old = (zip_record(rel, op.update.old_row_data)
               if len(op.update.old_row_data) == len(rel.columns) else None)
        open_tx.changes.append(
            UpdatedRecord((rel.schema, rel.table), zip_record(rel, op.update.row_data), old))
    elif kind == "delete":
        rel = _client_relation(relations, op.delete.relation_id)
        open_tx.changes.append(
            DeletedRecord((rel.schema, rel.table), zip_record(rel, op.delete.old_row_data)))
    return open_tx, None


def _client_relation(relations: dict[int, ClientRelation], relation_id: int) -> ClientRelation:
    rel = relations.get(relation_id)
    if rel is None:
        raise ProtocolViolation(
            frames.INVALID_REQUEST, f"unknown relation id {relation_id} (no SatRelation sent)"
        )
    return rel


def ms_to_datetime(ms: int) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise ProtocolViolation(frames.INVALID_REQUEST, f"invalid commit_timestamp {ms}") from None


def datetime_to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return max(0, (value - _EPOCH) // timedelta(milliseconds=1))


def zip_record(rel: ClientRelation, values: Any) -> Record:
    """Column names ↔ values, truncated to the shorter list (as the reference does).

    Values are stored as Postgres text, so they must be UTF-8."""
    record: Record = {}
    for name, value in zip(rel.columns, values, strict=False):
        try:
            record[name] = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation(
                frames.INVALID_REQUEST,
                f"value of {rel.table}.{name} is not UTF-8 text (send the Postgres text form)",
            ) from None
    return record


def row_values(table: Any, record: Record | None) -> list[bytes]:
    """Registry column order; NULL and absent columns both become empty bytes (no null
    marker exists in this protocol version)."""
    record = record or {}
    out = []
    for column in table.columns:
        value = record.get(column.name)
        if value is None:
            out.append(b"")
        elif isinstance(value, bytes):
            out.append(value)
        else:
            out.append(str(value).encode("utf-8"))
    return out


def change_op(table: Any, change: Any) -> pb.SatTransOp:
    rel_id = table.oid
    if isinstance(change, NewRecord):
        return pb.SatTransOp(
            insert=pb.SatOpInsert(relation_id=rel_id, row_data=row_values(table, change.record))
        )
    if isinstance(change, UpdatedRecord):
        old = row_values(table, change.old_record) if change.old_record else []
        return pb.SatTransOp(
            update=pb.SatOpUpdate(
                relation_id=rel_id, row_data=row_values(table, change.record), old_row_data=old
            )
        )
    if isinstance(change, DeletedRecord):
        return pb.SatTransOp(
            delete=pb.SatOpDelete(relation_id=rel_id,
                                  old_row_data=row_values(table, change.old_record))
        )
    raise TypeError(f"unsupported change {type(change).__name__}")


def relation_message(table: Any) -> pb.SatRelation:
    return pb.SatRelation(
        schema_name=table.schema,
        table_type=pb.SatRelation.TABLE,
        table_name=table.name,
        relation_id=table.oid,
        columns=[pb.SatRelationColumn(name=c.name, type=c.type_name) for c in table.columns],
    )
