"""Transaction assembly from decoded pgoutput messages (no Postgres needed)."""

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electric.changes import (
    Column,
    DeletedRecord,
    NewRecord,
    Table,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.postgres import pgoutput as po
from electric.postgres.assembler import TransactionAssembler
from electric.postgres.lsn import Lsn
from electric.postgres.pgoutput import ProtocolError
from electric.postgres.pgoutput_decode import decode
from electric.postgres.pgoutput_encode import encode

TS = datetime(2022, 6, 9, 9, 45, 11, tzinfo=UTC)
ITEMS = po.Relation(
    100,
    "public",
    "items",
    "d",
    (po.RelationColumn("id", 23, -1, 1), po.RelationColumn("body", 25, -1, 0)),
)
FULL = po.Relation(
    101,
    "public",
    "full",
    "f",
    (po.RelationColumn("id", 23, -1, 1), po.RelationColumn("body", 25, -1, 1)),
)
NOPK = po.Relation(102, "public", "nopk", "d", (po.RelationColumn("x", 25, -1, 0),))
MIGRATIONS = po.Relation(
    103,
    "electric",
    "migrations",
    "d",
    (po.RelationColumn("id", 23, -1, 1), po.RelationColumn("version", 1043, 68, 0)),
)


def table(rel: po.Relation, pks: tuple[str, ...]) -> Table:
    cols = tuple(Column(c.name, "text") for c in rel.columns)
    return Table(rel.namespace, rel.name, 0, cols, pks)


REGISTRY = {("public", "items"): table(ITEMS, ("id",)), ("public", "full"): table(FULL, ("id",))}


def make(**kw) -> TransactionAssembler:
    kw.setdefault("table_lookup", REGISTRY.get)
    a = TransactionAssembler("pg_1", "all_tables", **kw)
    for rel in (ITEMS, FULL, NOPK, MIGRATIONS):
        a.feed(rel)
    return a


FINAL, END = Lsn(0x100), Lsn(0x130)


def run(a: TransactionAssembler, *messages, final=FINAL, end=END):
    assert a.feed(po.Begin(final, TS, 7)) is None
    for m in messages:
        assert a.feed(m) is None
    return a.feed(po.Commit(final, end, TS))


def test_insert_update_delete_in_order():
    a = make()
    c = run(
        a,
        po.Insert(100, (b"1", "héllo".encode())),
        po.Update(100, (b"1", None)),
        po.Delete(100, key=(b"1", None)),
    )
    assert c.needs_write and c.end_lsn == 0x130 and c.skipped is None
    tx = c.transaction
    assert (tx.origin, tx.publication, tx.lsn, tx.commit_timestamp) == (
        "pg_1",
        "all_tables",
        0x130,
        TS,
    )
    assert tx.changes == [
        NewRecord(("public", "items"), {"id": "1", "body": "héllo"}),
        UpdatedRecord(("public", "items"), {"id": "1", "body": None}, None),
        DeletedRecord(("public", "items"), {"id": "1"}),
    ]


def test_full_identity_old_rows_and_toast_fill_in():
    a = make()
    c = run(
        a,
        po.Update(101, (b"1", po.UNCHANGED_TOAST), old=(b"1", b"big")),
        po.Delete(101, old=(b"1", b"big")),
    )
    assert c.transaction.changes == [
        UpdatedRecord(("public", "full"), {"id": "1", "body": "big"}, {"id": "1", "body": "big"}),
        DeletedRecord(("public", "full"), {"id": "1", "body": "big"}),
    ]


def test_unchanged_toast_left_out_without_old_row():
    c = run(make(), po.Update(100, (b"1", po.UNCHANGED_TOAST)))
    assert c.transaction.changes == [UpdatedRecord(("public", "items"), {"id": "1"}, None)]


def test_primary_key_change_becomes_delete_plus_insert():
    c = run(make(), po.Update(100, (b"2", b"x"), key=(b"1", None)))
    assert c.transaction.changes == [
        DeletedRecord(("public", "items"), {"id": "1"}),
        NewRecord(("public", "items"), {"id": "2", "body": "x"}),
    ]
    c = run(make(), po.Update(101, (b"2", b"x"), old=(b"1", b"x")))
    assert c.transaction.changes == [
        DeletedRecord(("public", "full"), {"id": "1", "body": "x"}),
        NewRecord(("public", "full"), {"id": "2", "body": "x"}),
    ]


def test_origin_transactions_dropped_but_acknowledged():
    c = run(make(), po.Origin(Lsn(5), "pg_16400"), po.Insert(100, (b"1", b"a")))
    assert not c.needs_write and c.skipped == "origin pg_16400" and c.end_lsn == 0x130
    assert c.transaction.changes == []


def test_row_messages_of_a_dropped_transaction_are_not_even_decoded():
    a = make()
    a.feed(po.Begin(FINAL, TS, 7))
    assert not a.dropping
    a.feed_bytes(encode(po.Origin(Lsn(5), "pg_16400")))
    assert a.dropping
    # Not valid messages: they would raise if decoded. Other kinds still are decoded.
    for junk in (b"I\x00\x00", b"U\xff", b"D"):
        assert a.feed_bytes(junk) is None
    with pytest.raises(ProtocolError):
        a.feed_bytes(b"R\x00")
    c = a.feed_bytes(encode(po.Commit(FINAL, END, TS)))
    assert c.skipped == "origin pg_16400" and not c.needs_write
    assert not a.dropping
    with pytest.raises(ProtocolError):  # outside a dropped transaction, rows are decoded
        a.feed_bytes(b"I\x00\x00")


def test_origin_filter_can_be_narrowed():
    a = make(drop_origin=lambda name: name == "pg_1")
    c = run(a, po.Origin(Lsn(5), "other"), po.Insert(100, (b"1", b"a")))
    assert c.needs_write


def test_bookkeeping_changes_left_out_user_changes_kept():
    c = run(make(), po.Insert(103, (b"1", b"v1")), po.Insert(100, (b"1", b"a")))
    assert c.transaction.changes == [NewRecord(("public", "items"), {"id": "1", "body": "a"})]
    c = run(make(), po.Insert(103, (b"1", b"v1")))
    assert not c.needs_write and c.skipped is None


def test_unregistered_table_left_out():
    c = run(make(), po.Insert(102, (b"x",)), po.Insert(100, (b"1", b"a")))
    assert [type(ch) for ch in c.transaction.changes] == [NewRecord]


def test_no_lookup_accepts_everything():
    c = run(make(table_lookup=None), po.Insert(102, (b"x",)))
    assert c.transaction.changes == [NewRecord(("public", "nopk"), {"x": "x"})]


def test_empty_transaction_still_acknowledged():
    c = run(make())
    assert not c.needs_write and c.end_lsn == 0x130 and c.skipped is None


def test_truncate_becomes_truncated_relation_records():
    c = run(
        make(),
        po.Truncate((100, 102, 103), po.TRUNCATE_CASCADE | po.TRUNCATE_RESTART_IDENTITY),
    )
    assert c.transaction.changes == [TruncatedRelation(("public", "items"))]
    assert c.truncated == (("public", "items"),)


def test_unknown_messages_skipped():
    c = run(
        make(),
        po.LogicalMessage(True, Lsn(1), "p", b"x"),
        po.Unknown(b"S", b""),
        po.Type(1, "s", "t"),
    )
    assert not c.needs_write


def test_relation_redefinition_is_used():
    a = make()
    a.feed(po.Relation(100, "public", "items", "d", (po.RelationColumn("id", 23, -1, 1),)))
    c = run(a, po.Insert(100, (b"9",)))
    assert c.transaction.changes == [NewRecord(("public", "items"), {"id": "9"})]


def test_feed_bytes():
    a = make()
    a.feed_bytes(encode(po.Begin(Lsn(1), TS, 1)))
    a.feed_bytes(encode(po.Insert(100, (b"1", b"z"))))
    c = a.feed_bytes(encode(po.Commit(Lsn(1), Lsn(2), TS)))
    assert c.transaction.changes[0].record == {"id": "1", "body": "z"}


@pytest.mark.parametrize(
    "messages",
    [
        [po.Insert(100, (b"1", b"a"))],
        [po.Commit(Lsn(1), Lsn(2), TS)],
        [po.Begin(Lsn(1), TS, 1), po.Begin(Lsn(1), TS, 1)],
        [po.Begin(Lsn(1), TS, 1), po.Commit(Lsn(2), Lsn(3), TS)],
        [po.Begin(Lsn(1), TS, 1), po.Insert(999, (b"1",))],
        [po.Begin(Lsn(1), TS, 1), po.Insert(100, (b"1",))],
        [po.Begin(Lsn(1), TS, 1), po.Insert(100, (b"1", b"\xff"))],
        [po.Begin(Lsn(1), TS, 1), po.Insert(100, (b"1", po.Binary(b"x")))],
    ],
)
def test_protocol_violations(messages):
    a = make()
    with pytest.raises(ProtocolError):
        for m in messages:
            a.feed(m)


def test_commit_lsn_mismatch_message():
    a = make()
    a.feed(po.Begin(Lsn(1), TS, 1))
    with pytest.raises(ProtocolError, match="does not match Begin final_lsn 0/1"):
        a.feed(po.Commit(Lsn(2), Lsn(3), TS))


# -- fuzz: any message sequence either assembles or raises ProtocolError ---------------------


_vals = st.one_of(st.none(), st.just(po.UNCHANGED_TOAST), st.binary(max_size=4))
_tuples = st.lists(_vals, max_size=3).map(tuple)
_rel_ids = st.sampled_from([100, 101, 102, 103, 104])
_lsns = st.integers(0, 5).map(Lsn)
_messages = st.one_of(
    st.builds(po.Begin, _lsns, st.just(TS), st.integers(0, 5)),
    st.builds(po.Commit, _lsns, _lsns, st.just(TS)),
    st.builds(po.Origin, _lsns, st.sampled_from(["a", "b"])),
    st.builds(po.Insert, _rel_ids, _tuples),
    st.builds(po.Update, _rel_ids, _tuples, st.one_of(st.none(), _tuples)),
    st.builds(po.Update, _rel_ids, _tuples, st.none(), st.one_of(st.none(), _tuples)),
    st.builds(po.Delete, _rel_ids, _tuples),
    st.builds(po.Delete, _rel_ids, st.none(), _tuples),
    st.builds(po.Truncate, st.lists(_rel_ids, max_size=3).map(tuple), st.integers(0, 3)),
    st.builds(po.Unknown, st.just(b"Z"), st.binary(max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_messages, max_size=12))
def test_any_message_sequence_only_raises_protocol_error(messages):
    a = make()
    for m in messages:
        try:
            result = a.feed(m)
        except ProtocolError:
            continue
        if result is not None:
            assert result.end_lsn == result.transaction.lsn


def test_changed_columns_trigger_one_refresh_per_relation_message():
    calls = []
    wide = po.Relation(
        100,
        "public",
        "items",
        "d",
        ITEMS.columns + (po.RelationColumn("extra", 25, -1, 0),),
    )
    refreshed = table(wide, ("id",))

    def refresh(name):
        calls.append(name)
        return refreshed

    a = make(refresh_table=refresh)
    run(a, po.Insert(100, (b"1", b"a")))
    assert calls == []  # columns match the registry: no refresh
    a.feed(wide)
    c = run(a, po.Insert(100, (b"2", b"b", b"x")), po.Insert(100, (b"3", b"c", b"y")))
    assert calls == [("public", "items")]
    assert c.transaction.changes[0].record == {"id": "2", "body": "b", "extra": "x"}


def _outcome(feed, messages):
    """The committed transaction (and what was skipped), or the error, of one stream."""
    try:
        c = None
        for m in messages:
            c = feed(m)
        return ("ok", c.transaction.changes, c.skipped, c.truncated)
    except ProtocolError as exc:
        return ("error", str(exc))


ROWS = [
    po.Insert(100, (b"1", b"a")),
    po.Insert(100, (b"1", None)),
    po.Insert(100, (b"1", po.UNCHANGED_TOAST)),
    po.Insert(100, (b"1", b"\xc3\xa9")),
    po.Insert(100, (b"1", b"\xff")),  # not UTF-8
    po.Insert(100, (b"1", po.Binary(b"x"))),  # binary was not requested
    po.Insert(100, (b"1",)),  # fewer columns than the relation
    po.Insert(999, (b"1",)),  # relation never described
    po.Insert(102, (b"x",)),  # no primary key: left out
    po.Insert(103, (b"1", b"v")),  # bookkeeping: left out
    po.Update(101, (b"1", b"b"), old=(b"1", b"a")),
    po.Update(101, (b"2", b"b"), old=(b"1", b"a")),  # key changed: delete + insert
    po.Update(101, (b"1", po.UNCHANGED_TOAST), old=(b"1", b"a")),  # TOAST from the old row
    po.Update(100, (b"1", b"b")),
    po.Update(100, (b"2", b"b"), key=(b"1", None)),  # 'K' tuple
    po.Delete(101, old=(b"1", b"a")),
    po.Delete(100, key=(b"1", None)),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ROWS), max_size=6), st.booleans())
def test_fast_row_path_equals_the_general_path(rows, echo):
    """``feed_bytes`` decodes plain rows straight into records; for every mix of plain and
    unusual row messages it must give exactly what decoding each message and ``feed`` give
    (the same changes, or the same error; an echo's rows are not decoded by either)."""
    messages = [po.Begin(FINAL, TS, 7)] + ([po.Origin(Lsn(5), "pg_x")] if echo else [])
    payloads = [encode(m) for m in messages + rows + [po.Commit(FINAL, END, TS)]]
    general = make()

    def decode_then_feed(payload: bytes):
        if general.dropping and payload[:1] in (b"I", b"U", b"D"):
            return None
        return general.feed(decode(payload))

    expected = _outcome(decode_then_feed, payloads)
    got = _outcome(make().feed_bytes, payloads)
    assert got == expected
