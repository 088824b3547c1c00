from dataclasses import replace
from datetime import UTC, datetime

import pytest

from electric.changes import (
    DeletedRecord,
    NewRecord,
    Transaction,
    TruncatedRelation,
    UpdatedRecord,
)
from electric.limits import DEFAULT
from electric.vaxine import antidote, crdt_terms, etf, rows
from tests.fixtures.vaxine.golden import frames, json_to_term, load

PKS = {("public", "entries"): ["id"], ("public", "items"): ["id"]}


def pk(rel):
    return PKS[rel]


def electric_views(name):
    return {f["seq"]: f for f in frames(name, 8088) if f["message"] == "vx_wal_txn"}


def record_of(view_row):
    return {k: (None if isinstance(v, dict) else v) for k, v in view_row["record"].items()}


def recorded_ops(name):
    """Serialized ApbUpdateOps of every UpdateObjects the scenario sent, in order."""
    out = []
    for f in frames(name, 8087, "client->server"):
        if f["message"].startswith("ApbUpdateObjects"):
            msg = antidote.decode_body(bytes.fromhex(f["hex"]))
            out += [op.SerializeToString() for op in msg.updates]
    return out


def tx_from_view(view, changes):
    meta = view["metadata_from_effects"]
    return Transaction(changes, rows.parse_commit_timestamp(meta["commit_timestamp"]),
                       origin=meta["origin"], publication=meta["publication"])


@pytest.mark.parametrize("scenario,seq", [("s1_insert", 4), ("s4_multi_row", 7)])
def test_inserts_match_recorded_vax_bytes(scenario, seq):
    view = electric_views("s7_replication")[seq]["summary"]["electric_view"]
    # S4 wrote its rows in this order (the stream's Ops order is internal)
    order = sorted(view["rows"], key=lambda r: (r["relation"][1] != "entries", r["key"]))
    changes = [NewRecord(tuple(r["relation"]), record_of(r)) for r in order]
    raw = rows.transaction_op_bytes(tx_from_view(view, changes), pk)
    assert raw == recorded_ops(scenario)  # the raw encoder, byte for byte
    ops = rows.transaction_ops(tx_from_view(view, changes), pk)
    assert [op.SerializeToString() for op in ops] == raw


def test_update_and_delete_contain_the_recorded_ops_plus_id_fields():
    views = electric_views("s7_replication")
    upd_view = views[5]["summary"]["electric_view"]
    row = upd_view["rows"][0]
    update = UpdatedRecord(("public", "entries"), record_of(row))
    ours = [op.SerializeToString()
            for op in rows.transaction_ops(tx_from_view(upd_view, [update]), pk)]
    recorded = recorded_ops("s2_update")
    assert set(recorded) <= set(ours)
    fields = [antidote_field(op) for op in ours[4:]]
    assert fields == [b"deleted?", b"id", b"row", b"schema", b"table"]  # docs/gaps.md G20: ids on update

    del_view = views[6]["summary"]["electric_view"]
    delete = DeletedRecord(("public", "entries"), record_of(del_view["rows"][0]))
    ours = [op.SerializeToString()
            for op in rows.transaction_ops(tx_from_view(del_view, [delete]), pk)]
    assert set(recorded_ops("s3_delete")) <= set(ours)


def antidote_field(raw):
    from electric.pb import antidote_pb2 as pb

    op = pb.ApbUpdateOp()
    op.ParseFromString(raw)
    return op.operation.mapop.updates[0].key.key


def test_delete_writes_only_key_columns():
    ops = rows.change_ops(DeletedRecord(("public", "entries"),
                                        {"id": "1", "content": "x"}), ["id"])
    row_op = [op for op in ops if op.operation.mapop.updates[0].key.key == b"row"][0]
    cols = [u.update.mapop.updates[0].key.key for u in row_op.operation.mapop.updates]
    assert cols == [b"id"]
    flag = ops[0].operation.mapop.updates[0].update.flagop
    assert flag.value is True


def test_pk_change_becomes_delete_plus_upsert():
    ops = rows.change_ops(UpdatedRecord(("public", "entries"), {"id": "2", "c": "x"},
                                        {"id": "1", "c": "x"}), ["id"])
    keys = [op.boundobject.key for op in ops]
    assert keys[0] == b"rows:public:entries:1" and keys[-1] == b"rows:public:entries:2"


def test_truncate_only_and_empty_write_nothing():
    class NoPool:
        def transaction(self):
            raise AssertionError("must not touch Vaxine")

    tx = Transaction([TruncatedRelation(("public", "entries"))], datetime.now(UTC))
    assert rows.write_transaction(NoPool(), tx, pk) is None
    assert rows.write_transaction(NoPool(), Transaction([], datetime.now(UTC)), pk) is None


@pytest.mark.parametrize("record", [{"content": "x"}, {"id": None}])
def test_missing_primary_key_raises_before_writing(record):
    tx = Transaction([NewRecord(("public", "entries"), record)], datetime.now(UTC))
    with pytest.raises(rows.RowMappingError):
        rows.transaction_ops(tx, pk)
    with pytest.raises(rows.RowMappingError):
        rows.transaction_ops(tx, lambda rel: [])


def test_values_and_timestamps():
    assert rows.encode_value(None) == bytes.fromhex("836400036e696c")
    assert rows.encode_value("hello world") == bytes.fromhex("836d0000000b68656c6c6f20776f726c64")
    assert rows.decode_value(rows.encode_value("é")) == "é"
    assert rows.decode_value(rows.encode_value(None)) is None
    assert rows.decode_value(etf.encode(7)) == "7"
    for text in ["", "x" * 70000, "a\udcff"]:  # the direct encoder == term_to_binary
        assert rows.encode_value(text) == etf.encode(text.encode("utf-8", "surrogateescape"))
        assert rows.decode_value(rows.encode_value(text)) == text
    with pytest.raises(etf.ETFError):  # short binary: not taken by the fast path either
        rows.decode_value(b"\x83m\x00\x00\x00\x05ab")
    ts = datetime(2022, 11, 28, 10, 0, 1, 1, tzinfo=UTC)
    assert rows.format_commit_timestamp(ts) == "2022-11-28 10:00:01.000001Z"
    for text in ["2022-11-28 10:00:01.000001Z", "2022-11-28T10:00:01.000001Z",
                 "2022-11-28T10:00:01.000001+00:00"]:
        assert rows.parse_commit_timestamp(text) == ts
    assert rows.parse_commit_timestamp("2022-10-21 17:07:23.516Z").microsecond == 516000


@pytest.mark.parametrize("name", ["s7_replication", "s8_restart"])
def test_transaction_from_real_vaxine_stream(name):
    for seq, frame in electric_views(name).items():
        term = json_to_term(frame["decoded"])
        view = frame["summary"]["electric_view"]
        tx = rows.transaction_from_wal(term)
        if view["metadata_from_effects"] is None:
            # S5's static write carries no metadata: its rows are still delivered, stamped
            # with the writer's clock (the largest register timestamp it wrote).
            assert [c.record for c in tx.changes] == [record_of(r) for r in view["rows"]]
            assert tx.commit_timestamp == datetime.fromtimestamp(1795771229136130 / 1e6, UTC)
            continue
        assert tx.commit_timestamp == rows.parse_commit_timestamp(
            view["metadata_from_effects"]["commit_timestamp"])
        assert tx.origin is None
        expected = sorted(
            (tuple(r["relation"]), r["deleted?"], tuple(sorted(record_of(r).items())))
             for r in view["rows"])
        got = sorted((c.relation, isinstance(c, DeletedRecord),
                      tuple(sorted((c.old_record if isinstance(c, DeletedRecord)
                                    else c.record).items())))
                     for c in tx.changes)
        # (s8 seq 6 is the real server's stale-token anomaly: both rules read "alive")
        assert got == expected, (name, seq)


def test_metadata_comes_from_effects():
    frame = electric_views("s7_replication")[4]
    ops = json_to_term(frame["decoded"])[4]
    assert rows.wal_metadata(ops) == {"commit_timestamp": "2022-11-28 10:00:01.000001Z",
                                      "id": "0", "origin": "postgres_1",
                                      "publication": "all_tables"}


def test_garbage_wal_term_raises_never_skipped():
    with pytest.raises(rows.UnreadableTransaction):
        rows.transaction_from_wal(("nope",))
    with pytest.raises(rows.UnreadableTransaction):
        rows.transaction_from_wal(load("s1_insert")["scenario"])


def test_transaction_without_electric_objects_is_not_electrics():
    term = (etf.Atom("vx_wal_txn"), 1, etf.Atom("dc"), (0, 10),
            [((b"other:key", b"bucket"), crdt_terms.LWW, (1, b"v"), [(1, b"v")])])
    assert rows.transaction_from_wal(term) is None


# -- the lost-row replay (issue: Vaxine streaming a transaction before its state has it) ----


def _with_row_state(term, key_prefix, state):
    """The same vx_wal_txn with the materialised state of every row object replaced."""
    tag, txid, dc, offset, ops = term
    ops = [((key, bucket), ctype, state if key.startswith(key_prefix) else st, effects)
           for (key, bucket), ctype, st, effects in ops]
    return (tag, txid, dc, offset, ops)


def _frame_tx(term):
    from electric.vaxine import stream

    stream._decoded._entries.clear()
    _term, tx, offset = stream.decode_wal_frame(etf.encode(term))
    return tx, offset


def test_row_missing_from_the_state_is_read_from_the_effects():
    """A WAL frame whose row state lacks id/schema/table (empty: the state from before the
    insert) but whose effects carry them yields the row, byte-level through the decoder."""
    views = electric_views("s7_replication")
    term = json_to_term(views[4]["decoded"])
    expected = rows.transaction_from_wal(term)
    lost = _with_row_state(term, b"rows:", crdt_terms.to_term(crdt_terms.MAP_RR, {}))
    tx, offset = _frame_tx(lost)
    assert offset == tuple(term[3])
    assert tx.changes == expected.changes
    assert isinstance(tx.changes[0], UpdatedRecord)
    assert tx.changes[0].record == record_of(views[4]["summary"]["electric_view"]["rows"][0])


def test_stale_state_is_overridden_by_the_transactions_own_effects():
    """An update streamed with the row's state from before it: the new values win."""
    views = electric_views("s7_replication")
    insert_term = json_to_term(views[4]["decoded"])
    update_term = json_to_term(views[5]["decoded"])
    old_state = next(st for (k, _b), _c, st, _e in insert_term[4] if k.startswith(b"rows:"))
    stale = _with_row_state(update_term, b"rows:", old_state)
    tx, _offset = _frame_tx(stale)
    assert tx.changes == rows.transaction_from_wal(update_term).changes
    assert tx.changes != rows.transaction_from_wal(insert_term).changes


def test_delete_streamed_before_its_state_is_still_a_delete():
    views = electric_views("s7_replication")
    delete_seq = next(seq for seq, f in views.items()
                      if any(r["deleted?"] for r in f["summary"]["electric_view"]["rows"]))
    term = json_to_term(views[delete_seq]["decoded"])
    # the state from before the delete: after the update that preceded it
    before = next(st for (k, _b), _c, st, _e in json_to_term(views[delete_seq - 1]["decoded"])[4]
                  if k.startswith(b"rows:"))
    tx, _offset = _frame_tx(_with_row_state(term, b"rows:", before))
    assert [type(c) for c in tx.changes] == [DeletedRecord]


def test_row_without_id_anywhere_stops_the_reader_with_its_offset_and_key():
    term = json_to_term(electric_views("s7_replication")[4]["decoded"])
    tag, txid, dc, offset, ops = term
    stripped = []
    for (key, bucket), ctype, state, effects in ops:
        if key.startswith(b"rows:"):
            state = crdt_terms.to_term(crdt_terms.MAP_RR, {})
            effects = [e for e in effects
                       if not any(f in (b"id", b"schema", b"table") for (f, _t), _n in e[0])]
        stripped.append(((key, bucket), ctype, state, effects))
    with pytest.raises(rows.UnreadableTransaction) as info:
        _frame_tx((tag, txid, dc, offset, stripped))
    assert info.value.offset == offset
    assert info.value.key.startswith(b"rows:public:entries:")
    assert "id/schema/table" in info.value.reason


def test_raw_encoders_match_protobuf_builders():
    from electric.pb import antidote_pb2 as pb

    long_value = b"v" * 300  # multi-byte varint lengths
    assert antidote.raw_reg_assign(long_value) == antidote.reg_assign(long_value).SerializeToString()
    for flag in (True, False):
        assert antidote.raw_flag_set(flag) == antidote.flag_set(flag).SerializeToString()
    nested = [(b"a", antidote.LWWREG, antidote.reg_assign(long_value))]
    raw_nested = [(b"a", antidote.LWWREG, antidote.raw_reg_assign(long_value))]
    assert antidote.raw_map_update(raw_nested) == antidote.map_update(nested).SerializeToString()
    op = antidote.update_op(antidote.bound_object(b"k" * 200, antidote.RRMAP),
                            antidote.map_update(nested))
    raw_op = antidote.raw_update_op(b"k" * 200, antidote.RRMAP, b"vax",
                                    antidote.raw_map_update(raw_nested))
    assert raw_op == op.SerializeToString()
    body = antidote.raw_update_objects_body(b"d" * 130, [raw_op, raw_op])
    assert body == antidote.encode_body(pb.ApbUpdateObjects(updates=[op, op],
                                                            transaction_descriptor=b"d" * 130))


def test_raw_static_update_matches_builder_and_recorded_frame():
    from electric.pb import antidote_pb2 as pb

    recorded = [f for f in frames("s5_static", 8087, "client->server")
                if f["message"].startswith("ApbStaticUpdateObjects")][0]
    msg = antidote.decode_body(bytes.fromhex(recorded["hex"]))
    raw_ops = [op.SerializeToString() for op in msg.updates]
    assert antidote.raw_static_update_body(raw_ops).hex() == recorded["hex"]
    assert antidote.encode_body(antidote.static_update(list(msg.updates))).hex() == recorded["hex"]
    assert isinstance(msg, pb.ApbStaticUpdateObjects)


def test_big_transactions_use_chunked_interactive_writes():
    calls = []

    class Txn:
        def update(self, ops):
            calls.append(("update", len(ops)))

        def commit(self):
            calls.append(("commit",))
            return b"clock"

    class Pool:
        from contextlib import contextmanager

        @contextmanager
        def transaction(self):
            yield Txn()

    changes = [NewRecord(("public", "entries"), {"id": str(i)}) for i in range(3)]
    tx = Transaction(changes, datetime.now(UTC))
    limits = replace(DEFAULT.vaxine, max_ops_per_request=12)
    assert rows.write_transaction(Pool(), tx, pk, limits) == b"clock"
    assert calls == [("update", 12), ("update", 7), ("commit",)]  # 4 metadata + 3 x 5 ops


def test_requests_are_split_by_encoded_size_too():
    ops = [b"x" * 1000] * 10
    assert [len(c) for c in rows.request_chunks(ops, max_ops=100, max_bytes=3100)] == [3, 3, 3, 1]
    assert [len(c) for c in rows.request_chunks(ops, max_ops=4, max_bytes=10**9)] == [4, 4, 2]
    huge = [b"a", b"y" * 5000, b"b"]  # a single op above max_bytes goes alone
    assert rows.request_chunks(huge, max_bytes=1000) == [[b"a"], [b"y" * 5000], [b"b"]]
    assert rows.request_chunks([]) == []


def test_big_rows_use_interactive_writes_split_by_size():
    calls = []

    class Txn:
        def update(self, ops):
            calls.append(sum(len(o) for o in ops))

        def commit(self):
            return b"clock"

    class Pool:
        from contextlib import contextmanager

        @contextmanager
        def transaction(self):
            yield Txn()

    changes = [NewRecord(("public", "entries"), {"id": str(i), "v": "z" * 100_000})
               for i in range(100)]
    assert rows.write_transaction(Pool(), Transaction(changes, datetime.now(UTC)), pk) == b"clock"
    assert len(calls) >= 3 and max(calls) <= DEFAULT.vaxine.max_request_bytes


def test_op_larger_than_a_frame_is_a_permanent_mapping_error():
    class NoPool:
        def connection(self):
            raise AssertionError("Vaxine must not be touched")

        transaction = connection

    limits = replace(DEFAULT.vaxine, max_frame=50_000 + 64 * 1024)  # ops up to 50,000 bytes
    change = NewRecord(("public", "entries"), {"id": "1", "v": "z" * 60_000})
    with pytest.raises(rows.RowMappingError, match="public.entries"):
        rows.write_transaction(NoPool(), Transaction([change], datetime.now(UTC)), pk, limits)


def test_transaction_too_big_for_one_log_record_is_a_permanent_mapping_error():
    class NoPool:
        def connection(self):
            raise AssertionError("Vaxine must not be touched")

        transaction = connection

    limits = replace(DEFAULT.vaxine, max_transaction_bytes=200_000)
    changes = [NewRecord(("public", "entries"), {"id": str(i), "v": "z" * 50_000})
               for i in range(5)]
    with pytest.raises(rows.RowMappingError, match="limit of one Vaxine transaction"):
        rows.write_transaction(NoPool(), Transaction(changes, datetime.now(UTC)), pk, limits)


def test_stream_accepts_any_frame_the_embedded_log_can_hold():
    # a frame is the logged Ops plus txid, DC id and offset (well under 1 MiB)
    assert DEFAULT.vaxine.stream_max_frame >= DEFAULT.vaxine.server_max_ops_bytes + (1 << 20)
