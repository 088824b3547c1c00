"""The outbound slot encoder and resume planning (no sockets, no files)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime

import pytest

from electric.changes import (
    Column,
    DeletedRecord,
    NewRecord,
    Table,
    Transaction,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.offsets.store import OffsetStore
from electric.postgres import pgoutput
from electric.postgres.lsn import Lsn
from electric.postgres.pgoutput_decode import decode
from electric.postgres.slot import SlotEncoder, plan_resume, relation_message

TS = datetime(2022, 11, 23, 10, 0, 0, tzinfo=UTC)
UUID = "46ae8d74-ea44-4322-a4f3-9cd1b680a5bf"

ENTRIES = Table(
    schema="public",
    name="entries",
    oid=20000,
    columns=(
        Column("id", "uuid", 2950, -1, False, True),
        Column("content", "varchar", 1043, 68, False, False),
        Column("content_b", "varchar", 1043, 68, True, False),
    ),
    primary_keys=("id",),
    replica_identity="f",
)
DEFAULT = Table(
    schema="public",
    name="entries_default",
    oid=20001,
    columns=ENTRIES.columns,
    primary_keys=("id",),
    replica_identity="d",
)
NOPK = Table("public", "nopk", 20002, (Column("k", "text"),), (), "f")
TABLES = {t.relation: t for t in (ENTRIES, DEFAULT, NOPK)}


def encoder(start: int = 0) -> SlotEncoder:
    return SlotEncoder(TABLES.get, Lsn(start), name="postgres_1")


def row(content="Hello from a", content_b=None):
    return {"id": UUID, "content": content, "content_b": content_b}


def test_worked_example_of_the_spec():
    """docs/protocols.md §2.4: fresh subscriber, one upserted row (sent as an INSERT)."""
    enc = encoder()
    out = enc.encode(Transaction([UpdatedRecord(("public", "entries"), row())], TS), b"off1")
    assert out is not None
    lsns = [lsn for lsn, _ in out.messages]
    payloads = [p for _, p in out.messages]
    assert lsns == [Lsn(0xA), Lsn(0), Lsn(0xA), Lsn(0x1E)]
    begin = bytes.fromhex("42 0000000000000014 0002911f1eca2800")
    assert payloads[0][:-4] == begin and payloads[0][-4:] != b"\0\0\0\0"  # xid is non-zero
    assert payloads[1] == bytes.fromhex(
        "52 00004e20 7075626c696300 656e747269657300 66 0003"
        " 01 696400 00000b86 ffffffff"
        " 01 636f6e74656e7400 00000413 00000044"
        " 01 636f6e74656e745f6200 00000413 00000044"
    )
    assert payloads[2] == (
        bytes.fromhex("49 00004e20 4e 0003 74 00000024")
        + UUID.encode()
        + bytes.fromhex("74 0000000c")
        + b"Hello from a"
        + b"n"
    )
    assert payloads[3] == bytes.fromhex("43 00 0000000000000014 000000000000001e 0002911f1eca2800")
    assert (out.final_lsn, out.end_lsn, out.offset, out.changes) == (0x14, 0x1E, b"off1", 1)
    assert enc.current_lsn == 0x1E


def test_lsns_are_consistent_across_transactions():
    enc = encoder(start=0x100)
    changes = [NewRecord(("public", "entries_default"), row(str(i))) for i in range(3)]
    first = enc.encode(Transaction(changes, TS), b"a")
    second = enc.encode(Transaction(changes[:1], TS), b"b")
    msgs = [decode(p) for _, p in first.messages]
    begin, commit = msgs[0], msgs[-1]
    assert begin.final_lsn == commit.lsn == first.final_lsn == 0x100 + 40
    assert commit.end_lsn == first.end_lsn == 0x100 + 50
    change_lsns = [
        lsn
        for (lsn, _), m in zip(first.messages, msgs, strict=True)
        if isinstance(m, pgoutput.Insert)
    ]
    assert change_lsns == [0x10A, 0x114, 0x11E]
    assert first.messages[-1][0] == commit.end_lsn
    # the next transaction continues from the previous end_lsn; the relation is not resent
    kinds = [type(decode(p)).__name__ for _, p in second.messages]
    assert kinds == ["Begin", "Insert", "Commit"]
    assert second.messages[0][0] == first.end_lsn + 10
    assert decode(second.messages[0][1]).xid != begin.xid


def test_relation_sent_once_per_session_in_order_of_first_use():
    enc = encoder()
    tx = Transaction(
        [
            NewRecord(("public", "entries_default"), row()),
            NewRecord(("public", "entries"), row()),
            NewRecord(("public", "entries_default"), row("x")),
        ],
        TS,
    )
    msgs = [decode(p) for _, p in enc.encode(tx, b"1").messages]
    rels = [m.name for m in msgs if isinstance(m, pgoutput.Relation)]
    assert rels == ["entries_default", "entries"]
    assert [type(m).__name__ for m in msgs][:3] == ["Begin", "Relation", "Relation"]
    # a fresh encoder (new session) describes them again
    msgs = [decode(p) for _, p in encoder().encode(tx, b"1").messages]
    assert sum(isinstance(m, pgoutput.Relation) for m in msgs) == 2


def test_key_flags():
    full = relation_message(ENTRIES)
    assert [c.is_key for c in full.columns] == [True, True, True]
    default = relation_message(DEFAULT)
    assert [c.is_key for c in default.columns] == [True, False, False]
    assert default.replica_identity == "d"


def test_upserts_are_inserts_with_every_column():
    enc = encoder()
    tx = Transaction(
        [UpdatedRecord(("public", "entries_default"), {"id": UUID, "content": "c"})], TS
    )
    msgs = [decode(p) for _, p in enc.encode(tx, b"1").messages]
    ins = [m for m in msgs if isinstance(m, pgoutput.Insert)]
    assert ins == [pgoutput.Insert(20001, (UUID.encode(), b"c", None))]
    assert not any(isinstance(m, pgoutput.Update) for m in msgs)


def test_deletes_full_row_or_key():
    enc = encoder()
    tx = Transaction(
        [
            DeletedRecord(("public", "entries"), row()),
            DeletedRecord(("public", "entries_default"), {"id": UUID}),
            DeletedRecord(("public", "entries_default"), {"content": "no key"}),
        ],
        TS,
    )
    out = enc.encode(tx, b"1")
    dels = [
        m for m in (decode(p) for _, p in out.messages) if isinstance(m, pgoutput.Delete)
    ]
    assert dels == [
        pgoutput.Delete(20000, old=(UUID.encode(), b"Hello from a", None)),
        pgoutput.Delete(20001, key=(UUID.encode(), None, None)),
    ]
    assert (out.changes, out.skipped) == (2, 1)


def test_unknown_tables_and_tables_without_pk_are_skipped():
    enc = encoder()
    tx = Transaction(
        [NewRecord(("public", "nope"), {"a": "1"}), NewRecord(("public", "nopk"), {"k": "1"})], TS
    )
    assert enc.encode(tx, b"1") is None
    assert enc.current_lsn == 0 and not enc.announced
    mixed = Transaction(tx.changes + [NewRecord(("public", "entries"), row())], TS)
    out = enc.encode(mixed, b"2")
    assert (out.changes, out.skipped) == (1, 2)
    assert set(enc.announced) == {("public", "entries")}


def test_truncate():
    out = encoder().encode(Transaction([TruncatedRelation(("public", "entries"))], TS), b"1")
    msgs = [decode(p) for _, p in out.messages]
    assert pgoutput.Truncate((20000,), 0) in msgs


def test_lsn_carries_into_high_word():
    enc = encoder(start=0xFFFFFFFA)
    out = enc.encode(Transaction([NewRecord(("public", "entries"), row())], TS), b"1")
    assert out.end_lsn == 0xFFFFFFFA + 30
    assert str(out.end_lsn) == "1/18"


# -- resume ---------------------------------------------------------------------------------


@pytest.fixture
def store():
    with tempfile.TemporaryDirectory() as d, OffsetStore(d + "/offsets.dat") as s:
        yield s


def test_new_subscriber_gets_everything(store):
    store.put_pg_mapping("s", 0x1E, b"x")  # from an earlier subscription of the same name
    plan = plan_resume(store, "s", 0)
    assert (plan.after_offset, plan.start_lsn, plan.reason) == (None, 0, "new")
    assert plan.anchor is None


def test_exact_and_older_mapping(store):
    store.put_pg_mappings("s", [(0x1E, b"a"), (0x32, b"b"), (0x46, b"c")])
    assert plan_resume(store, "s", 0x32) == plan_resume(store, "s", Lsn(0x32))
    plan = plan_resume(store, "s", 0x32)
    assert (plan.after_offset, plan.start_lsn, plan.reason) == (b"b", 0x32, "exact")
    plan = plan_resume(store, "s", 0x40)
    assert (plan.after_offset, plan.start_lsn, plan.reason) == (b"b", 0x40, "older")


def test_collected_mappings_resume_after_the_oldest_kept(store):
    store.put_pg_mappings("s", [(0x1E, b"a"), (0x32, b"b"), (0x46, b"c"), (0x5A, b"d")])
    store.gc_pg_mappings("s", 0x50)  # keeps 0x46 and newer
    plan = plan_resume(store, "s", 0x1E)
    assert (plan.after_offset, plan.start_lsn, plan.reason) == (b"c", 0x1E, "collected")
    assert plan.anchor == (0x1E, b"c")
    store.put_pg_mapping("s", *plan.anchor)
    assert plan_resume(store, "s", 0x1E).reason == "exact"


def test_lost_offset_file_replays_from_the_start_numbered_above(store):
    plan = plan_resume(store, "s", 0x258)
    assert (plan.after_offset, plan.start_lsn, plan.reason) == (None, 0x258, "unknown")


def test_renumbering_from_an_older_position_supersedes_newer_mappings(store):
    """A reconnect at 0x32 numbers the re-sent transactions from 0x32 upwards again."""
    store.put_pg_mappings("s", [(0x1E, b"a"), (0x32, b"b"), (0x46, b"c")])
    plan = plan_resume(store, "s", 0x32)
    store.put_pg_mapping("s", *plan.anchor)
    assert store.last_pg_mapping("s") == (0x32, b"b")
    enc = encoder(plan.start_lsn)
    out = enc.encode(Transaction([NewRecord(("public", "entries"), row())], TS), b"c")
    store.put_pg_mapping("s", out.end_lsn, out.offset)
    assert out.end_lsn == 0x32 + 30
    assert store.last_pg_mapping("s") == (0x50, b"c")
    assert store.get_pg_offset_at_or_before("s", 0x46) == (0x32, b"b")


def test_description_is_fixed_for_the_session():
    """A table changed in the registry mid-session keeps its announced shape until the next
    session (tuples must match the Relation the subscriber holds)."""
    tables = dict(TABLES)
    enc = SlotEncoder(tables.get, Lsn(0))
    enc.encode(Transaction([NewRecord(("public", "entries_default"), row())], TS), b"1")
    wider = Table(
        DEFAULT.schema,
        DEFAULT.name,
        DEFAULT.oid,
        DEFAULT.columns + (Column("extra", "text"),),
        DEFAULT.primary_keys,
        "d",
    )
    tables[DEFAULT.relation] = wider
    rec = {**row(), "extra": "new column"}
    out = enc.encode(Transaction([NewRecord(DEFAULT.relation, rec)], TS), b"2")
    msgs = [decode(p) for _, p in out.messages]
    assert [len(m.new) for m in msgs if isinstance(m, pgoutput.Insert)] == [3]
    assert not any(isinstance(m, pgoutput.Relation) for m in msgs)
    fresh = SlotEncoder(tables.get, Lsn(0)).encode(
        Transaction([NewRecord(DEFAULT.relation, rec)], TS), b"2"
    )
    msgs = [decode(p) for _, p in fresh.messages]
    assert [len(m.columns) for m in msgs if isinstance(m, pgoutput.Relation)] == [4]
    assert [m.new[-1] for m in msgs if isinstance(m, pgoutput.Insert)] == [b"new column"]


def test_lookup_is_asked_once_per_table_and_session():
    asked = []

    def lookup(rel):
        asked.append(rel)
        return TABLES.get(rel)

    enc = SlotEncoder(lookup, Lsn(0))
    for i in range(3):
        enc.encode(Transaction([NewRecord(ENTRIES.relation, row(str(i)))] * 2, TS), b"%d" % i)
    assert asked == [ENTRIES.relation]
