"""The SatOpLog codec (electric/satellite/oplog.py) without a session: client operations
assembled into one Transaction, and the operations and relations a client receives."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from electric.changes import Column, DeletedRecord, NewRecord, Table, UpdatedRecord
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from electric.satellite.oplog import (
    ClientRelation,
    ProtocolViolation,
    apply_op,
    change_op,
    datetime_to_ms,
    ms_to_datetime,
    relation_message,
)

REL = {7: ClientRelation("public", "items", ["id", "title"])}
TABLE = Table("public", "items", 20001, (Column("id", "text"), Column("title", "text")), ("id",))
TS_MS = 1669161600000


def ops(*kinds):
    out = []
    for kind in kinds:
        if kind == "begin":
            out.append(pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=TS_MS, lsn=b"l1")))
        elif kind == "insert":
            out.append(pb.SatTransOp(insert=pb.SatOpInsert(relation_id=7, row_data=[b"1", b"a"])))
        elif kind == "update":
            out.append(pb.SatTransOp(update=pb.SatOpUpdate(
                relation_id=7, row_data=[b"1", b"b"], old_row_data=[b"1", b"a"])))
        elif kind == "update_partial_old":
            out.append(pb.SatTransOp(update=pb.SatOpUpdate(
                relation_id=7, row_data=[b"1", b"b"], old_row_data=[b"1"])))
        elif kind == "delete":
            out.append(pb.SatTransOp(delete=pb.SatOpDelete(relation_id=7, old_row_data=[b"1"])))
        elif kind == "commit":
            out.append(pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=TS_MS, lsn=b"l1")))
    return out


def run(*kinds):
    open_tx, done = None, []
    for op in ops(*kinds):
        open_tx, finished = apply_op(op, open_tx, REL, "client-1")
        if finished is not None:
            done.append(finished)
    return open_tx, done


def test_a_transaction_is_built_once_at_its_commit():
    open_tx, done = run("begin", "insert", "update", "update_partial_old", "delete")
    assert done == [] and len(open_tx.changes) == 4
    open_tx, done = run("begin", "insert", "update", "update_partial_old", "delete", "commit")
    (tx,) = done
    assert open_tx is None
    assert (tx.origin, tx.lsn, tx.publication) == ("client-1", b"l1", "")
    assert tx.commit_timestamp == datetime(2022, 11, 23, tzinfo=UTC)
    assert tx.changes == [
        NewRecord(("public", "items"), {"id": "1", "title": "a"}),
        UpdatedRecord(("public", "items"), {"id": "1", "title": "b"}, {"id": "1", "title": "a"}),
        # an old row without every column is not taken (it would be shifted)
        UpdatedRecord(("public", "items"), {"id": "1", "title": "b"}, None),
        DeletedRecord(("public", "items"), {"id": "1"}),
    ]


@pytest.mark.parametrize("kinds, reason", [
    (("insert",), "insert outside a transaction"),
    (("commit",), "commit outside a transaction"),
    (("begin", "begin"), "begin inside an open transaction"),
])
def test_operations_out_of_place(kinds, reason):
    with pytest.raises(ProtocolViolation) as exc:
        run(*kinds)
    assert exc.value.code == frames.INVALID_REQUEST and exc.value.reason == reason


def test_bad_operations():
    tx, _ = run("begin")
    for op, reason in [
        (pb.SatTransOp(), "empty SatTransOp"),
        (pb.SatTransOp(insert=pb.SatOpInsert(relation_id=9, row_data=[b"x"])),
         "unknown relation id 9 (no SatRelation sent)"),
        (pb.SatTransOp(insert=pb.SatOpInsert(relation_id=7)), "insert with empty row_data"),
        (pb.SatTransOp(insert=pb.SatOpInsert(relation_id=7, row_data=[b"\xff"])),
         "value of items.id is not UTF-8 text (send the Postgres text form)"),
        (pb.SatTransOp(begin=pb.SatOpBegin()), "begin inside an open transaction"),
    ]:
        with pytest.raises(ProtocolViolation) as exc:
            apply_op(op, tx, REL, "c")
        assert exc.value.reason == reason
    with pytest.raises(ProtocolViolation, match="begin with an empty lsn"):
        apply_op(pb.SatTransOp(begin=pb.SatOpBegin()), None, REL, "c")


def test_timestamps():
    assert datetime_to_ms(ms_to_datetime(TS_MS)) == TS_MS
    assert datetime_to_ms(datetime(2022, 11, 23)) == TS_MS  # naive means UTC
    with pytest.raises(ProtocolViolation, match="invalid commit_timestamp"):
        ms_to_datetime(2**62)


def test_outgoing_operations_and_relation():
    op = change_op(TABLE, UpdatedRecord(TABLE.relation, {"id": "1", "title": None},
                                        {"id": "1", "title": "old"}))
    assert list(op.update.row_data) == [b"1", b""] and list(op.update.old_row_data) == [b"1",
                                                                                          b"old"]
    assert op.update.relation_id == 20001
    op = change_op(TABLE, DeletedRecord(TABLE.relation, {"id": "2"}))
    assert list(op.delete.old_row_data) == [b"2", b""]
    assert relation_message(TABLE) == pb.SatRelation(
        schema_name="public", table_type=pb.SatRelation.TABLE, table_name="items",
        relation_id=20001, columns=[pb.SatRelationColumn(name="id", type="text"),
                                    pb.SatRelationColumn(name="title", type="text")])
