import os

import pytest

from electric.vaxine.embedded.log import HEADER_SIZE, LogError, TxnLog, frame_record


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
    log.close()


def test_big_record_read_whole(tmp_path):
    log, _ = open_log(tmp_path / "l")
    big = os.urandom(3000)
    log.wait_durable(log.append(big))
    assert log.read_records(0, max_bytes=100) == [(0, big)]
    log.close()
    with pytest.raises(LogError):
        log.append(b"after close")
