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
