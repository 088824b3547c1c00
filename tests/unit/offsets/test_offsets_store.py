"""Offset file: durability, recovery rules and lookup semantics (docs/protocols.md §5, §2.5)."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from electric.offsets import errors, records
from electric.offsets.errors import OffsetFileCorrupt, OffsetFileLocked, OffsetFileVersionError
from electric.offsets.records import HEADER_SIZE
from electric.offsets.store import TEMP_SUFFIX, OffsetStore
from tests.support.waiting import wait_until


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "offsets.dat")


@pytest.fixture
def warnings():
    """Collect loguru WARNING+ messages emitted during the test."""
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING")
    yield seen
    logger.remove(sink)


def reopen(store: OffsetStore, **kw) -> OffsetStore:
    store.close()
    return OffsetStore(store.path, **kw)


# --------------------------------------------------------------------- round trips


def test_empty_store_returns_none(path):
    with OffsetStore(path) as s:
        assert s.get_satellite_lsn("c1") is None
        assert s.get_pg_offset_at_or_before("slot", 10) is None
        assert s.last_pg_mapping("slot") is None
        assert s.pg_slots() == []


def test_satellite_round_trip_and_overwrite(path):
    s = OffsetStore(path)
    s.put_satellite_lsn("c1", b"\x83h\x02a\x01a\x02")
    s.put_satellite_lsn("c2", b"")
    assert s.get_satellite_lsn("c1") == b"\x83h\x02a\x01a\x02"
    assert s.get_satellite_lsn("c2") == b""
    s.put_satellite_lsn("c1", b"second")
    assert s.get_satellite_lsn("c1") == b"second"
    s = reopen(s)
    assert s.get_satellite_lsn("c1") == b"second"
    assert s.get_satellite_lsn("c2") == b""
    assert s.get_satellite_lsn("c3") is None
    s.close()


def test_os1_put_then_get(path):
    # nothing, then a mapping, then the same position mapped again: the last one wins
    s = OffsetStore(path)
    assert s.get_pg_offset_at_or_before("slot", 1) is None
    s.put_pg_mapping("slot", 1, b"1")
    assert s.get_pg_offset_at_or_before("slot", 1) == (1, b"1")
    s.put_pg_mapping("slot", 1, b"2")
    assert s.get_pg_offset_at_or_before("slot", 1) == (1, b"2")
    s = reopen(s)
    assert s.get_pg_offset_at_or_before("slot", 1) == (1, b"2")
    s.close()


def test_lookup_semantics_multiples_of_three(path):
    # greatest position at or below the one asked for, bound included
    s = OffsetStore(path)
    for lsn in range(0, 100, 3):
        s.put_pg_mapping("slot", lsn, str(lsn).encode())
    assert s.get_pg_offset_at_or_before("slot", 61) == (60, b"60")
    assert s.get_pg_offset_at_or_before("slot", 60) == (60, b"60")  # bound included
    assert s.get_pg_offset_at_or_before("slot", 0) == (0, b"0")
    assert s.get_pg_offset_at_or_before("slot", 10**12) == (99, b"99")
    assert s.get_pg_offset_at_or_before("other", 10) is None
    assert s.last_pg_mapping("slot") == (99, b"99")
    s = reopen(s)
    assert s.get_pg_offset_at_or_before("slot", 61) == (60, b"60")
    assert s.get_pg_offset_at_or_before("slot", 2) == (0, b"0")
    s.close()


def test_lookup_below_first_is_none(path):
    with OffsetStore(path) as s:
        s.put_pg_mapping("slot", 50, b"x")
        assert s.get_pg_offset_at_or_before("slot", 49) is None


def test_batch_put_is_one_fsync(path, monkeypatch):
    s = OffsetStore(path)
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    s.put_pg_mappings("slot", [(10 * i, bytes([i])) for i in range(1, 50)])
    assert len(calls) == 1
    assert s.get_pg_offset_at_or_before("slot", 255) == (250, bytes([25]))
    s = reopen(s)
    assert s.last_pg_mapping("slot") == (490, bytes([49]))
    s.close()


def test_every_put_is_fsynced_before_returning(path, monkeypatch):
    s = OffsetStore(path)
    events: list[str] = []
    real_fsync, real_pwrite = os.fsync, os.pwrite
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(
        os, "pwrite", lambda fd, d, p: (events.append("write"), real_pwrite(fd, d, p))[1]
    )
    s.put_satellite_lsn("c", b"1")
    assert events == ["write", "fsync"]
    events.clear()
    s.put_pg_mapping("slot", 5, b"o")
    assert events == ["write", "fsync"]
    events.clear()
    s.put_satellite_lsn("c", b"1")  # unchanged value: already durable, no write needed
    assert events == []
    s.close()


def test_lsn_renumbering_discards_abandoned_future(path):
    s = OffsetStore(path)
    s.put_pg_mappings("slot", [(10, b"a"), (20, b"b"), (30, b"c")])
    # The subscriber came back at 20 and the publisher numbers from there again.
    s.put_pg_mapping("slot", 20, b"B")
    assert s.last_pg_mapping("slot") == (20, b"B")
    assert s.get_pg_offset_at_or_before("slot", 100) == (20, b"B")
    assert s.get_pg_offset_at_or_before("slot", 15) == (10, b"a")
    s = reopen(s)
    assert s.last_pg_mapping("slot") == (20, b"B")
    s.close()


def test_slots_are_independent(path):
    with OffsetStore(path) as s:
        s.put_pg_mapping("a", 10, b"a10")
        s.put_pg_mapping("b", 5, b"b5")
        assert s.get_pg_offset_at_or_before("a", 7) is None
        assert s.get_pg_offset_at_or_before("b", 7) == (5, b"b5")
        assert sorted(s.pg_slots()) == ["a", "b"]


def test_unicode_names(path):
    s = OffsetStore(path)
    s.put_satellite_lsn("clïent-✓", b"\x00\xff")
    s.put_pg_mapping('sl"ot ü', 1, b"\x00")
    s = reopen(s)
    assert s.get_satellite_lsn("clïent-✓") == b"\x00\xff"
    assert s.last_pg_mapping('sl"ot ü') == (1, b"\x00")
    s.close()


def test_large_lsn_values(path):
    s = OffsetStore(path)
    top = (1 << 64) - 1
    s.put_pg_mapping("slot", top, b"max")
    s = reopen(s)
    assert s.get_pg_offset_at_or_before("slot", top) == (top, b"max")
    with pytest.raises(ValueError):
        s.put_pg_mapping("slot", 1 << 64, b"x")
    with pytest.raises(ValueError):
        s.put_pg_mapping("slot", -1, b"x")
    s.close()


# --------------------------------------------------------------------- garbage collection


def test_gc_keeps_newest_at_or_before_confirmed(path):
    s = OffsetStore(path)
    s.put_pg_mappings("slot", [(lsn, b"%d" % lsn) for lsn in range(0, 100, 3)])
    dropped = s.gc_pg_mappings("slot", 61)
    assert dropped == 20  # 0..57 gone, 60 kept
    assert s.get_pg_offset_at_or_before("slot", 61) == (60, b"60")
    assert s.get_pg_offset_at_or_before("slot", 59) is None
    assert s.last_pg_mapping("slot") == (99, b"99")
    assert s.gc_pg_mappings("slot", 61) == 0  # idempotent
    assert s.gc_pg_mappings("slot", 1) == 0  # below everything: nothing to drop
    assert s.gc_pg_mappings("unknown", 1) == 0
    s = reopen(s)
    assert s.get_pg_offset_at_or_before("slot", 59) is None
    assert s.get_pg_offset_at_or_before("slot", 61) == (60, b"60")
    s.close()


def test_gc_record_survives_compaction_and_is_reflected_in_live_size(path):
    s = OffsetStore(path)
    s.put_pg_mappings("slot", [(lsn, b"x" * 20) for lsn in range(1000)])
    before = s.live_bytes
    s.gc_pg_mappings("slot", 900)
    assert s.live_bytes < before / 5
    s.compact()
    assert s.file_size == s.live_bytes
    s = reopen(s)
    assert s.get_pg_offset_at_or_before("slot", 950) == (950, b"x" * 20)
    assert s.get_pg_offset_at_or_before("slot", 899) is None
    s.close()


# --------------------------------------------------------------------- compaction


def test_compact_keeps_live_state_only(path):
    s = OffsetStore(path)
    for i in range(200):
        s.put_satellite_lsn("c", b"%d" % i)
    s.put_pg_mappings("slot", [(1, b"a"), (2, b"b")])
    big = s.file_size
    estimate = s.live_bytes
    s.compact()
    assert s.file_size == estimate  # the running estimate is exact
    assert s.file_size < big / 10
    s.put_satellite_lsn("d", b"after")  # appends go to the new file
    s = reopen(s)
    assert s.get_satellite_lsn("c") == b"199"
    assert s.get_satellite_lsn("d") == b"after"
    assert s.last_pg_mapping("slot") == (2, b"b")
    assert not os.path.exists(path + TEMP_SUFFIX)
    s.close()


def test_compaction_fsyncs_file_and_directory(path, monkeypatch):
    s = OffsetStore(path)
    s.put_satellite_lsn("c", b"1")
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))
    )
    s.compact()
    # temp file fsynced (it is later renamed), then the directory.
    assert synced[0].endswith(TEMP_SUFFIX)
    assert synced[-1] == os.path.dirname(path)
    s.close()


def test_automatic_compaction_when_file_grows(path):
    s = OffsetStore(path, compact_ratio=3.0, compact_min_bytes=4096)
    for i in range(2000):
        s.put_satellite_lsn("c", b"%08d" % i)
        assert s.file_size <= max(4096, 3.0 * s.live_bytes) + 64
    assert s.file_size < 4096 + 64
    s = reopen(s)
    assert s.get_satellite_lsn("c") == b"00001999"
    s.close()


def test_leftover_temp_file_is_removed_and_old_data_intact(path, warnings):
    s = OffsetStore(path)
    s.put_satellite_lsn("c", b"keep")
    s.close()
    with open(path + TEMP_SUFFIX, "wb") as f:
        f.write(b"half-written compaction")
    s = OffsetStore(path)
    assert s.get_satellite_lsn("c") == b"keep"
    assert not os.path.exists(path + TEMP_SUFFIX)
    assert any("unfinished compaction" in w for w in warnings)
    s.close()


def test_compaction_failure_before_rename_leaves_old_file(path):
    s = OffsetStore(path)
    s.put_satellite_lsn("c", b"v1")

    def boom(stage):
        if stage == "temp_written":
            raise OSError("disk on fire")

    s._compaction_hook = boom
    with pytest.raises(OSError):
        s.compact()
    s._compaction_hook = None
    # Still usable, still the same file.
    s.put_satellite_lsn("c", b"v2")
    s = reopen(s)
    assert s.get_satellite_lsn("c") == b"v2"
    assert not os.path.exists(path + TEMP_SUFFIX)
    s.close()


# --------------------------------------------------------------------- crash recovery


def _fill(path) -> list[int]:
    """Three satellite records; returns the byte offset where each record starts."""
    s = OffsetStore(path)
    starts = []
    for i in range(3):
        starts.append(s.file_size)
        s.put_satellite_lsn(f"c{i}", b"lsn-%d" % i)
    s.close()
    return starts


@pytest.mark.parametrize("cut", [1, 4, 8, 11, 12, 13, 16])
def test_torn_tail_is_dropped_with_warning(path, warnings, cut):
    starts = _fill(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(starts[2] + cut)
    s = OffsetStore(path)
    assert s.get_satellite_lsn("c0") == b"lsn-0"
    assert s.get_satellite_lsn("c1") == b"lsn-1"
    assert s.get_satellite_lsn("c2") is None
    assert os.path.getsize(path) == starts[2] < size  # truncated away
    assert any("incomplete last record" in w and str(starts[2]) in w for w in warnings)
    # Appending after recovery gives a clean file.
    s.put_satellite_lsn("c2", b"again")
    s = reopen(s)
    assert s.get_satellite_lsn("c2") == b"again"
    s.close()


def test_zero_filled_tail_is_dropped(path, warnings):
    _fill(path)
    with open(path, "ab") as f:
        f.write(b"\x00" * 4096)  # what a power loss with delayed allocation can leave
    with OffsetStore(path) as s:
        assert s.get_satellite_lsn("c2") == b"lsn-2"
    assert warnings


def test_bad_checksum_in_last_record_is_treated_as_torn(path, warnings):
    starts = _fill(path)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 1)
        f.write(b"\xee")
    with OffsetStore(path) as s:
        assert s.get_satellite_lsn("c1") == b"lsn-1"
        assert s.get_satellite_lsn("c2") is None
    assert os.path.getsize(path) == starts[2]


@pytest.mark.parametrize("where", ["length", "crc", "headcrc", "payload"])
def test_corrupted_middle_record_stops_startup(path, where):
    starts = _fill(path)
    pos = starts[1] + {"length": 2, "crc": 5, "headcrc": 9, "payload": 14}[where]
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))
    with pytest.raises(OffsetFileCorrupt) as ei:
        OffsetStore(path)
    err = ei.value
    assert err.path == path
    assert err.offset == starts[1]
    msg = str(err)
    assert path in msg and str(starts[1]) in msg and "\n" not in msg
    # The file is left untouched for the operator to inspect.
    with pytest.raises(OffsetFileCorrupt):
        OffsetStore(path)


def test_valid_checksum_but_unknown_kind_is_corrupt(path):
    _fill(path)
    with open(path, "ab") as f:
        f.write(records.frame(b"\x7fwhatever"))
    with pytest.raises(OffsetFileCorrupt, match="unknown record kind"):
        OffsetStore(path)


def test_huge_length_is_corrupt_without_allocating(path):
    _fill(path)
    head = struct.pack(">II", 0xFFFFFFF0, 0)
    with open(path, "ab") as f:
        f.write(head + struct.pack(">I", zlib.crc32(head)) + b"x" * 100)
    with pytest.raises(OffsetFileCorrupt, match="impossible record length"):
        OffsetStore(path)


# --------------------------------------------------------------------- header / version


def test_bad_magic(path):
    with open(path, "wb") as f:
        f.write(b"NOTMINE!" + b"\x00" * 40)
    with pytest.raises(OffsetFileVersionError, match="not an Electric offset file") as ei:
        OffsetStore(path)
    assert isinstance(ei.value, OffsetFileCorrupt)  # the CLI catches one class
    assert path in str(ei.value)


def test_unknown_version(path):
    head = struct.pack(">8sHH", records.MAGIC, 99, 0)
    with open(path, "wb") as f:
        f.write(head + struct.pack(">I", zlib.crc32(head)))
    with pytest.raises(
        OffsetFileVersionError, match=r"unsupported format version 99 \(this build reads 1\)"
    ):
        OffsetStore(path)


def test_header_checksum(path):
    _fill(path)
    with open(path, "r+b") as f:
        f.seek(11)
        f.write(b"\x01")
    with pytest.raises(OffsetFileCorrupt, match="header checksum"):
        OffsetStore(path)


def test_short_file(path):
    with open(path, "wb") as f:
        f.write(records.MAGIC[:5])
    with pytest.raises(OffsetFileVersionError, match="shorter than the header"):
        OffsetStore(path)


def test_empty_existing_file_is_initialised(path):
    open(path, "wb").close()
    with OffsetStore(path) as s:
        s.put_satellite_lsn("c", b"1")
    assert os.path.getsize(path) > HEADER_SIZE
    with OffsetStore(path) as s:
        assert s.get_satellite_lsn("c") == b"1"


def test_new_file_has_header(path):
    OffsetStore(path).close()
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"ELOFFSET" and len(data) == HEADER_SIZE
    assert struct.unpack(">H", data[8:10])[0] == records.FORMAT_VERSION


# --------------------------------------------------------------------- misc


def test_second_opener_is_refused(path):
    s = OffsetStore(path)
    with pytest.raises(OffsetFileLocked, match="in use"):
        OffsetStore(path)
    s.compact()  # the lock moves to the new file with the descriptor
    with pytest.raises(OffsetFileLocked):
        OffsetStore(path)
    s.close()
    OffsetStore(path).close()


def test_missing_parent_directory_is_created(tmp_path):
    path = str(tmp_path / "a" / "b" / "offsets.dat")
    with OffsetStore(path) as s:
        s.put_satellite_lsn("c", b"1")
    assert os.path.getsize(path) > HEADER_SIZE


def test_unopenable_path_is_one_clear_error(tmp_path):
    (tmp_path / "dir.dat").mkdir()
    with pytest.raises(errors.OffsetFileError, match="cannot open offset file .*dir.dat") as ei:
        OffsetStore(str(tmp_path / "dir.dat"))
    assert "\n" not in str(ei.value)


def test_closed_store_refuses_writes(path):
    s = OffsetStore(path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(errors.OffsetFileError, match="closed"):
        s.put_satellite_lsn("c", b"1")


def test_failed_write_is_rolled_back_and_store_refuses_further_writes(path, monkeypatch):
    s = OffsetStore(path)
    s.put_satellite_lsn("c", b"ok")
    size = s.file_size

    def fail(fd):
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        s.put_satellite_lsn("c", b"lost")
    monkeypatch.undo()
    assert s.get_satellite_lsn("c") == b"ok"  # index not updated: caller must not ack
    assert os.path.getsize(path) == size  # partial record cut off
    with pytest.raises(errors.OffsetFileError, match="unusable"):
        s.put_satellite_lsn("c", b"later")
    s = reopen(s)
    assert s.get_satellite_lsn("c") == b"ok"
    s.close()


def test_concurrent_greenlets(path):
    import gevent

    s = OffsetStore(path)

    def writer(n):
        for i in range(50):
            s.put_pg_mapping(f"slot{n}", i, b"%d" % i)
            s.put_satellite_lsn(f"c{n}", b"%d" % i)
            gevent.sleep(0)

    gevent.joinall([gevent.spawn(writer, n) for n in range(4)], raise_error=True)
    s = reopen(s)
    for n in range(4):
        assert s.last_pg_mapping(f"slot{n}") == (49, b"49")
        assert s.get_satellite_lsn(f"c{n}") == b"49"
    s.close()


# --------------------------------------------------------------------- property: damage never lies


_op = st.one_of(
    st.tuples(st.just("sat"), st.sampled_from(["a", "b"]), st.binary(max_size=8)),
    st.tuples(
        st.just("pg"), st.sampled_from(["s", "t"]), st.integers(0, 50), st.binary(max_size=6)
    ),
    st.tuples(st.just("gc"), st.sampled_from(["s", "t"]), st.integers(0, 50)),
)


def _state(s: OffsetStore):
    return (
        dict(s._index.satellite),
        {k: list(zip(v.lsns, v.offsets, strict=True)) for k, v in s._index.slots.items() if v.lsns},
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_op, min_size=1, max_size=12), st.data())
def test_damage_is_detected_or_only_loses_the_tail(tmp_path_factory, ops, data):
    path = str(tmp_path_factory.mktemp("prop") / "o.dat")
    s = OffsetStore(path)
    bounds = [s.file_size]  # file size after each record
    states = [_state(s)]
    for op in ops:
        before = s.file_size
        if op[0] == "sat":
            s.put_satellite_lsn(op[1], op[2])
        elif op[0] == "pg":
            s.put_pg_mapping(op[1], op[2], op[3])
        else:
            s.gc_pg_mappings(op[1], op[2])
        if s.file_size != before:
            bounds.append(s.file_size)
            states.append(_state(s))
    s.close()
    size = bounds[-1]
    assert os.path.getsize(path) == size
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(HEADER_SIZE, size), label="cut")
        with open(path, "r+b") as f:
            f.truncate(cut)
        complete = max(i for i, b in enumerate(bounds) if b <= cut)
        with OffsetStore(path) as s2:
            assert _state(s2) == states[complete]
        return
    pos = data.draw(st.integers(0, size - 1), label="pos")
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ data.draw(st.integers(1, 255), label="xor")]))
    last_start = bounds[-2] if len(bounds) > 1 else None
    if last_start is not None and pos >= last_start:
        # Damage inside the last record is indistinguishable from a torn write.
        try:
            with OffsetStore(path) as s2:
                assert _state(s2) == states[-2]
        except OffsetFileCorrupt:
            pass  # e.g. the damaged byte is in the length and now reads as impossible
    else:
        with pytest.raises(OffsetFileCorrupt):
            OffsetStore(path)


# --------------------------------------------------------------------- kills during a put


def _slow_fsync(monkeypatch, started):
    """Make fsync take a while in the thread pool and report (thread-safely) that it began."""
    import time

    real = os.fsync

    def slow(fd):
        started.set()
        time.sleep(0.05)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow)


def _kill_mid_fsync(monkeypatch, put) -> None:
    import threading

    import gevent

    started = threading.Event()
    _slow_fsync(monkeypatch, started)
    g = gevent.spawn(put)
    wait_until(started.is_set, 5, "the fsync under way", step=0.001)
    g.kill(block=True, timeout=5)
    assert g.dead
    monkeypatch.undo()


@pytest.mark.parametrize(
    "first,second",
    [
        (b"L" * 200, b"s"),  # a shorter record lands where the longer one was
        (b"s", b"L" * 200),
        (b"same-size-1", b"same-size-2"),
    ],
)
def test_put_killed_during_fsync_leaves_a_sound_file(path, monkeypatch, warnings, first, second):
    # The satellite writer greenlet is killed on disconnect while it may be waiting for a put's
    # fsync in the thread pool. The record is already written at that point: forgetting that
    # made the next put overwrite it in place, leaving the longer record's tail behind it, and
    # the next start failed with "record head checksum mismatch".
    s = OffsetStore(path)
    s.put_satellite_lsn("other", b"before")
    _kill_mid_fsync(monkeypatch, lambda: s.put_satellite_lsn("client-a", first))
    # The killed put was completed (the fsync was waited out), so memory and disk agree.
    assert s.get_satellite_lsn("client-a") == first
    assert s.file_size == os.path.getsize(path)
    s.put_satellite_lsn("client-b", second)
    s.put_pg_mapping("slot", 7, b"vx7")
    state = _state(s)
    s = reopen(s)
    assert _state(s) == state
    assert s.get_satellite_lsn("client-a") == first
    assert s.get_satellite_lsn("client-b") == second
    assert s.get_satellite_lsn("other") == b"before"
    assert s.last_pg_mapping("slot") == (7, b"vx7")
    s.close()
    assert warnings == []  # nothing torn, nothing dropped


def test_pg_batch_killed_during_fsync_then_renumbered(path, monkeypatch, warnings):
    s = OffsetStore(path)
    batch = [(i, b"offset-%d" % i * 10) for i in range(1, 6)]
    _kill_mid_fsync(monkeypatch, lambda: s.put_pg_mappings("slot", batch))
    assert s.last_pg_mapping("slot") == batch[-1]
    s.put_pg_mapping("slot", 3, b"x")  # renumbering: short record after a long one
    state = _state(s)
    s = reopen(s)
    assert _state(s) == state
    assert s.last_pg_mapping("slot") == (3, b"x")
    assert s.get_pg_offset_at_or_before("slot", 2) == batch[1]
    s.close()
    assert warnings == []


def test_repeated_kills_and_timeouts_do_not_cut_the_fsync_short(path, monkeypatch):
    import threading

    import gevent

    s = OffsetStore(path)
    started = threading.Event()
    _slow_fsync(monkeypatch, started)

    def put():
        with gevent.Timeout(0.001):
            s.put_satellite_lsn("c", b"v" * 50)

    g = gevent.spawn(put)
    wait_until(started.is_set, 5, "the fsync under way", step=0.001)
    g.kill(block=False)
    g.kill(block=False)
    g.join(timeout=5)
    assert g.dead
    monkeypatch.undo()
    assert s.get_satellite_lsn("c") == b"v" * 50
    s.put_satellite_lsn("c", b"w")
    s = reopen(s)
    assert s.get_satellite_lsn("c") == b"w"
    s.close()


def test_the_record_size_limit_is_the_one_it_was_given(path):
    from dataclasses import replace

    from electric.limits import DEFAULT

    small = replace(DEFAULT.service, offsets_max_record_size=64)
    with OffsetStore(path) as s:
        s.put_satellite_lsn("c", b"x" * 100)  # fits the default limit
    with pytest.raises(OffsetFileCorrupt, match="impossible record length"):
        OffsetStore(path, limits=small)
    with OffsetStore(path + ".2", limits=small) as s, pytest.raises(ValueError, match="too large"):
        s.put_satellite_lsn("c", b"x" * 100)
