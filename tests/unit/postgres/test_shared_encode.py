"""Encode once: row messages shared by every subscriber session (no sockets)."""

from __future__ import annotations

import dataclasses

from electric import limits, metrics
from electric.changes import DeletedRecord, NewRecord, Transaction, TruncatedRelation
from electric.postgres import copyboth
from electric.postgres.lsn import Lsn
from electric.postgres.shared_encode import SharedEncodings
from electric.postgres.slot import SlotEncoder

from .test_slot import DEFAULT, ENTRIES, NOPK, TABLES, TS, UUID, row

SEND_TIME = 123456789


def _encoded() -> float:
    return metrics.REGISTRY.get_sample_value(
        "electric_transactions_encoded_total", {"protocol": "pgoutput"}) or 0.0


def _log() -> list[tuple[Transaction, bytes]]:
    return [
        (Transaction([NewRecord(ENTRIES.relation, row("a")),
                      NewRecord(DEFAULT.relation, row("b")),
                      NewRecord(NOPK.relation, {"k": "x"})], TS), b"o1"),
        (Transaction([DeletedRecord(ENTRIES.relation, row("a")),
                      DeletedRecord(DEFAULT.relation, {"id": UUID}),
                      TruncatedRelation(DEFAULT.relation)], TS), b"o2"),
        (Transaction([NewRecord(ENTRIES.relation, row(str(i))) for i in range(50)], TS), b"o3"),
    ]


def _framed(enc: SlotEncoder, tx: Transaction, offset: bytes) -> bytes | None:
    out = enc.encode(tx, offset)
    if out is None:
        return None
    return b"".join(copyboth.xlog_data(lsn, lsn, p, SEND_TIME) for lsn, p in out.messages)


def test_shared_frames_equal_the_per_session_encoding_byte_for_byte():
    shared = SharedEncodings()
    for start in (0, 5000):  # two sessions numbering from different positions
        alone = SlotEncoder(TABLES.get, Lsn(start))
        framed = SlotEncoder(TABLES.get, Lsn(start), shared=shared)
        for tx, offset in _log():
            want = _framed(alone, tx, offset)
            got = framed.encode_frames(tx, offset, SEND_TIME)
            assert want == b"".join(got.frames)
            assert got.end_lsn == alone.current_lsn == framed.current_lsn
    assert shared.stats["encoded"] == 3 and shared.stats["reused"] == 3


def test_ten_sessions_encode_each_transaction_once():
    shared = SharedEncodings()
    before = _encoded()
    sessions = [SlotEncoder(TABLES.get, Lsn(100 * i), shared=shared) for i in range(10)]
    for tx, offset in _log():
        outs = [s.encode_frames(tx, offset, SEND_TIME) for s in sessions]
        if offset == b"o2":
            continue  # ends with a Truncate, which carries its relation id: per session
        # The last row's body is the very same bytes object in every session's frames;
        # its header (numbering) is each session's own.
        assert all(out.frames[-2] is outs[0].frames[-2] for out in outs)
        assert len({out.frames[-3] for out in outs}) == 10
    assert _encoded() - before == 3
    assert shared.stats["reused"] == 27


def test_other_oids_share_the_rows_but_not_other_columns():
    shared = SharedEncodings()
    other_oids = {rel: dataclasses.replace(t, oid=t.oid + 500) for rel, t in TABLES.items()}
    fewer = dict(TABLES)
    fewer[ENTRIES.relation] = dataclasses.replace(ENTRIES, columns=ENTRIES.columns[:2])
    tx, offset = _log()[2]
    for lookup in (TABLES.get, other_oids.get, fewer.get):
        alone = SlotEncoder(lookup)
        got = SlotEncoder(lookup, shared=shared).encode_frames(tx, offset, SEND_TIME)
        assert b"".join(got.frames) == _framed(alone, tx, offset)
    assert shared.stats == {"encoded": 2, "reused": 1, "evicted": 0}


def test_the_cache_is_bounded_in_bytes():
    shared = SharedEncodings(dataclasses.replace(limits.DEFAULT.postgres,
                                                 publisher_encode_cache_bytes=20_000))
    enc = SlotEncoder(TABLES.get, shared=shared)
    for i in range(200):
        tx = Transaction([NewRecord(ENTRIES.relation, row("x" * 100))], TS)
        enc.encode_frames(tx, b"pos%d" % i, SEND_TIME)
    assert shared.bytes <= 20_000
    assert shared.stats["evicted"] > 0
