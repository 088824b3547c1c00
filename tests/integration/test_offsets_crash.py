"""The offset file under real process death (os._exit at compaction stages, SIGKILL mid-put).

Each case runs a child Python process that uses :class:`electric.offsets.store.OffsetStore` and
dies abruptly; the parent then reopens the file and checks that nothing acknowledged was lost.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from electric.offsets.store import TEMP_SUFFIX, OffsetStore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


COMPACT_AND_DIE = """
    import os, sys
    from electric.offsets.store import OffsetStore
    path, stage = sys.argv[1], sys.argv[2]
    s = OffsetStore(path)
    for i in range(100):
        s.put_satellite_lsn("c", b"%d" % i)
    s.put_pg_mappings("slot", [(n, b"o%d" % n) for n in range(0, 100, 3)])
    print("ready", flush=True)
    def hook(st):
        if st == stage:
            os._exit(9)
    s._compaction_hook = hook
    s.compact()
    print("survived", flush=True)
"""


@pytest.mark.parametrize("stage", ["temp_written", "renamed"])
def test_kill_during_compaction_keeps_data(tmp_path, stage):
    path = str(tmp_path / "offsets.dat")
    child = run_child(COMPACT_AND_DIE, path, stage)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 9, out
    assert out.split() == ["ready"]
    if stage == "temp_written":
        assert os.path.exists(path + TEMP_SUFFIX)  # the crash really left the temp file
    with OffsetStore(path) as s:
        assert s.get_satellite_lsn("c") == b"99"
        assert s.get_pg_offset_at_or_before("slot", 61) == (60, b"o60")
        assert s.last_pg_mapping("slot") == (99, b"o99")
    assert not os.path.exists(path + TEMP_SUFFIX)


PUT_FOREVER = """
    import sys
    from electric.offsets.store import OffsetStore
    path, start = sys.argv[1], int(sys.argv[2])
    # Small compaction threshold so kills also land inside compactions.
    s = OffsetStore(path, compact_ratio=2.0, compact_min_bytes=2048)
    i = start
    while True:
        s.put_satellite_lsn("client", b"%d" % i)
        s.put_pg_mapping("slot", i, b"vx%d" % i)
        s.gc_pg_mappings("slot", i - 5)
        print(i, flush=True)   # only after put returned: this is the "ack"
        i += 1
"""


def test_sigkill_mid_put_never_loses_an_ack(tmp_path):
    path = str(tmp_path / "offsets.dat")
    rnd = random.Random(8)
    start = 0
    for _cycle in range(6):
        child = run_child(PUT_FOREVER, path, str(start))
        acked = -1
        target = rnd.randint(20, 400)
        for line in child.stdout:
            acked = int(line)
            if acked - start >= target:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        # Acks printed before the kill but not read yet are acks too: the last one counts.
        for line in child.stdout:
            acked = int(line)
        child.stdout.close()
        with OffsetStore(path) as s:
            sat = int(s.get_satellite_lsn("client"))
            last_lsn, off = s.last_pg_mapping("slot")
            # Every acked value is durable; at most the in-flight one beyond it.
            assert acked <= sat <= acked + 1
            assert acked <= last_lsn <= acked + 1
            assert off == b"vx%d" % last_lsn
            assert s.get_pg_offset_at_or_before("slot", acked) == (acked, b"vx%d" % acked)
        start = last_lsn + 1
