import os

import pytest

from electric.vaxine.embedded.log import (
    HEADER_SIZE,
    LogCorrupt,
    LogError,
    TxnLog,
    frame_record,
)


def open_log(path):
    log = TxnLog(str(path))
    records = list(log.open())
    return log, records


def test_append_sync_reopen(tmp_path):
    path = tmp_path / "l"
    log, recs = open_log(path)
    assert recs == []
    offsets = [log.append(b"rec%d" % i) for i in range(5)]
    assert log.durable_end == 0  # nothing durable before the flusher ran
    log.wait_durable(offsets[-1])
    assert log.durable_end == log.end == os.path.getsize(path)
    assert [p for _o, p in log.read_records(0)] == [b"rec%d" % i for i in range(5)]
    assert log.read_records(offsets[2])[0] == (offsets[2], b"rec2")
    log.close()
    log, recs = open_log(path)
    assert recs == [(o, b"rec%d" % i) for i, o in enumerate(offsets)]
    log.close()


@pytest.mark.parametrize("cut", [1, HEADER_SIZE, HEADER_SIZE + 2])
def test_torn_tail_is_truncated(tmp_path, cut):
    path = tmp_path / "l"
    good = frame_record(b"a") + frame_record(b"bb")
    path.write_bytes(good + frame_record(b"torn record")[:cut])
    log, recs = open_log(path)
    assert [p for _o, p in recs] == [b"a", b"bb"]
    assert os.path.getsize(path) == len(good)
    off = log.append(b"next")
    assert off == len(good)
    log.wait_durable(off)
    log.close()
    assert [p for _o, p in open_log(path)[1]] == [b"a", b"bb", b"next"]


def test_bad_checksum_ends_the_log(tmp_path):
    path = tmp_path / "l"
    bad = bytearray(frame_record(b"xyz"))
    bad[-1] ^= 0xFF
    path.write_bytes(frame_record(b"a") + bytes(bad))
    log, recs = open_log(path)
    assert [p for _o, p in recs] == [b"a"]
    assert os.path.getsize(path) == len(frame_record(b"a"))
    log.close()


def _five_records():
    return [frame_record(b"committed record %d" % i) for i in range(5)]


@pytest.mark.parametrize(
    "where",
    [
        HEADER_SIZE + 3,  # payload byte of record 0: checksum mismatch with 4 records after
        2,  # length field of record 0: now runs past the end of the file
        5,  # checksum field of record 0
    ],
)
def test_damage_before_intact_records_raises_and_keeps_file(tmp_path, where):
    path = tmp_path / "l"
    data = bytearray(b"".join(_five_records()))
    data[where] ^= 0x5A
    path.write_bytes(bytes(data))
    log = TxnLog(str(path))
    with pytest.raises(LogCorrupt) as info:
        list(log.open())
    assert info.value.offset == 0
    assert info.value.path == str(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, LogError)
    assert path.read_bytes() == bytes(data)  # nothing truncated


def test_damage_in_middle_record_raises_after_yielding_the_good_prefix(tmp_path):
    path = tmp_path / "l"
    recs = _five_records()
    data = bytearray(b"".join(recs))
    bad_at = len(recs[0]) + len(recs[1])
    data[bad_at + HEADER_SIZE] ^= 1
    path.write_bytes(bytes(data))
    seen = []
    with pytest.raises(LogCorrupt) as info:
        for _off, payload in TxnLog(str(path)).open():
            seen.append(payload)
    assert info.value.offset == bad_at
    assert len(seen) == 2
    assert path.read_bytes() == bytes(data)


def test_truncated_last_record_is_dropped_with_warning(tmp_path):
    from loguru import logger

    path = tmp_path / "l"
    recs = _five_records()
    good = b"".join(recs[:4])
    path.write_bytes(good + recs[4][:-3])
    messages = []
    sink = logger.add(lambda m: messages.append(m.record), level="WARNING")
    try:
        log, got = open_log(path)
    finally:
        logger.remove(sink)
    assert [p for _o, p in got] == [b"committed record %d" % i for i in range(4)]
    assert os.path.getsize(path) == len(good)
    assert any(m["level"].name == "WARNING" and "dropping" in m["message"] for m in messages)
    log.close()


def test_zero_filled_tail_is_dropped(tmp_path):
    path = tmp_path / "l"
    good = b"".join(_five_records()[:2])
    path.write_bytes(good + bytes(4096))
    log, got = open_log(path)
    assert len(got) == 2
    assert os.path.getsize(path) == len(good)
    log.close()


def test_empty_record_refused(tmp_path):
    log, _ = open_log(tmp_path / "l")
    with pytest.raises(LogError):
        log.append(b"")
    log.close()


def test_big_record_read_whole(tmp_path):
    log, _ = open_log(tmp_path / "l")
    big = os.urandom(3000)
    log.wait_durable(log.append(big))
    assert log.read_records(0, max_bytes=100) == [(0, big)]
    log.close()
    with pytest.raises(LogError):
        log.append(b"after close")


def test_group_commit_acknowledges_each_record_only_after_its_sync(tmp_path, monkeypatch):
    """Concurrent commits share fsyncs, and nobody is released before the sync that
    covers their record has returned (acknowledged = durable)."""
    import gevent

    from electric.vaxine.embedded import log as log_mod

    synced_upto = [0]  # file size at the last completed sync
    syncs = [0]
    real_sync = log_mod._sync

    def slow_sync(fd):
        gevent.sleep(0.005)  # let more commits queue up behind this sync
        real_sync(fd)
        synced_upto[0] = os.fstat(fd).st_size
        syncs[0] += 1

    monkeypatch.setattr(log_mod, "_sync", slow_sync)
    log = TxnLog(str(tmp_path / "l"), use_threadpool=False)
    list(log.open())
    released = []

    def committer(i):
        for j in range(5):
            payload = b"c%d-%d" % (i, j)
            offset = log.append(payload)
            log.wait_durable(offset)
            # the whole record is on disk and covered by a finished sync
            assert synced_upto[0] >= offset + HEADER_SIZE + len(payload)
            released.append(offset)
            gevent.sleep(0)

    gevent.joinall([gevent.spawn(committer, i) for i in range(8)], raise_error=True)
    assert len(released) == 40
    assert syncs[0] < 40 / 2  # group commit: far fewer syncs than commits
    log.close()
    reopened = TxnLog(str(tmp_path / "l"))
    assert len(list(reopened.open())) == 40
    reopened.close()
