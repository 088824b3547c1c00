"""CopyBoth stream frames: byte vectors of docs/protocols.md §2.4."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

from electric.postgres import copyboth, pgtime


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def test_copy_frames():
    assert copyboth.copy_done() == h("63 00000004")
    assert copyboth.copy_data(b"xy") == h("64 00000006 7879")


SEND_TIME = pgtime.to_pg_micros(datetime(2022, 11, 23, 10, 0, 1, tzinfo=UTC))


def test_xlog_data_begin_vector():
    begin = h("42 0000000000000014 0002911f1eca2800 00000000")
    assert copyboth.xlog_data(0xA, 0xA, begin, SEND_TIME) == h(
        "64 00000032 77 000000000000000a 000000000000000a 0002911f1ed96a40"
        "42 0000000000000014 0002911f1eca2800 00000000"
    )


def test_xlog_data_commit_vector():
    commit = h("43 00 0000000000000014 000000000000001e 0002911f1eca2800")
    assert copyboth.xlog_data(0x1E, 0x1E, commit, SEND_TIME) == h(
        "64 00000037 77 000000000000001e 000000000000001e 0002911f1ed96a40"
        "43 00 0000000000000014 000000000000001e 0002911f1eca2800"
    )


def test_keepalive_vector():
    assert copyboth.primary_keepalive(0, SEND_TIME) == h(
        "64 00000016 6b 0000000000000000 0002911f1ed96a40 00"
    )
    assert copyboth.primary_keepalive(0x1E, SEND_TIME, reply_requested=True)[-1:] == b"\x01"
    assert copyboth.primary_keepalive((1 << 64) - 1, 0)[6:14] == b"\xff" * 8


def test_builders_default_send_time_is_now():
    out = copyboth.primary_keepalive(5)
    (t,) = struct.unpack(">q", out[14:22])
    assert abs(t - pgtime.pg_now_micros()) < 5_000_000
