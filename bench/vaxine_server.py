"""``python -m bench.vaxine_server [--rows N] [--old-ref REF]``: ``bin/electric vaxine`` alone.

Writes N rows (100-row transactions of distinct keys) through the Antidote API (Electric's
own client: pool + row mapping, as an Electric with ``VAXINE_HOST`` does) into a standalone
``electric vaxine`` process, and reports the server's RSS growth per 100,000 rows and the
rows/s the API took. The same run measures this checkout's server and the one of ``REF``
(default: the last commit with the first release's in-memory engine), each in its own
process on its own data directory, alternating; ratios are what to compare. Printed as one
JSON line.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent import socket  # noqa: E402

from electric.changes import NewRecord, Transaction, utc_now  # noqa: E402
from electric.devenv import free_port  # noqa: E402
from electric.vaxine import rows  # noqa: E402
from electric.vaxine.pool import VaxinePool  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# main just before the SQLite engine: every object's state in memory, vaxine.log records.
OLD_REF = "9ba8f92"
REL = ("public", "bench_vx")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _checkout(ref: str) -> str:
    """The ``electric`` package of ``ref`` in a temporary directory (with this checkout's
    generated protobuf modules, which are not in git)."""
    out = tempfile.mkdtemp(prefix="bench-vx-src-")
    archive = subprocess.run(["git", "archive", ref, "electric"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    pb = os.path.join(ROOT, "electric", "pb")
    for name in os.listdir(pb):
        if name.endswith("_pb2.py"):
            shutil.copy(os.path.join(pb, name), os.path.join(out, "electric", "pb", name))
    return out


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"electric vaxine exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            gevent.sleep(0.05)
    raise RuntimeError("electric vaxine did not start")


def measure(src: str, total_rows: int, per_tx: int = 100, writers: int = 4) -> dict:
    data = tempfile.mkdtemp(prefix="bench-vx-data-")
    api, repl = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "electric.vaxine.embedded", "--data-dir", data,
         "--api-port", str(api), "--replication-port", str(repl)],
        cwd=src, env={**os.environ, "PYTHONPATH": src}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    pool = VaxinePool("127.0.0.1", api, size=writers)
    try:
        _wait_listening(api, proc)
        # A first transaction so that imports and buffers are in place before the baseline.
        rows.write_transaction(pool, Transaction([NewRecord(REL, {"id": "warm", "v": "x"})],
                                                 utc_now()), lambda _r: ["id"])
        before = _rss_kib(proc.pid)
        txns = total_rows // per_tx
        next_tx = iter(range(txns))

        done = [0]

        def writer() -> None:
            for t in next_tx:
                changes = [NewRecord(REL, {"id": f"{t}-{r}", "v": "a row of some text",
                                           "n": str(r)}) for r in range(per_tx)]
                rows.write_transaction(pool, Transaction(changes, utc_now()), lambda _r: ["id"])
                done[0] += 1

        # RSS after each quarter: a bounded engine levels off, one that keeps every row grows
        # by the same step each time.
        marks = [before]
        watch = gevent.spawn(_watch_quarters, proc.pid, txns, done, marks)
        start = time.monotonic()
        gevent.joinall([gevent.spawn(writer) for _ in range(writers)], raise_error=True)
        elapsed = time.monotonic() - start
        watch.join(timeout=5)
        after = _rss_kib(proc.pid)
    finally:
        pool.close()
        proc.terminate()
        proc.wait(timeout=30)
    size = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
    shutil.rmtree(data, ignore_errors=True)
    half = marks[2] if len(marks) > 2 else before
    return {"rows": total_rows, "rows_per_s": round(total_rows / elapsed),
            "rss_start_mib": round(before / 1024, 1), "rss_end_mib": round(after / 1024, 1),
            "rss_quarters_mib": [round(m / 1024, 1) for m in marks[1:]],
            "rss_mib_per_100k_rows": round((after - before) / 1024 * 100_000 / total_rows, 1),
            "rss_mib_per_100k_rows_second_half":
                round((after - half) / 1024 * 100_000 / (total_rows / 2), 1),
            "data_dir_mib": round(size / 2**20, 1)}


def _watch_quarters(pid: int, txns: int, done: list[int], marks: list[int]) -> None:
    for quarter in (1, 2, 3):
        while done[0] < txns * quarter // 4:
            gevent.sleep(0.05)
        marks.append(_rss_kib(pid))


def run(total_rows: int, old_ref: str | None = OLD_REF, rounds: int = 2) -> dict:
    """Each engine ``rounds`` times, alternating (old, new, old, new, ...) so that a
    machine getting busier or quieter during the run does not favour one of them; the
    best round of each is reported."""
    result: dict = {"rows": total_rows}
    src = None
    if old_ref:
        try:
            src = _checkout(old_ref)
        except subprocess.CalledProcessError:  # a shallow clone: measure this checkout only
            result["old_ref_unavailable"] = old_ref
    try:
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for _ in range(rounds):
            if src is not None:
                runs["old"].append(measure(src, total_rows))
            runs["new"].append(measure(ROOT, total_rows))
    finally:
        if src is not None:
            shutil.rmtree(src, ignore_errors=True)
    for name, measured in runs.items():
        if measured:
            result[name] = max(measured, key=lambda r: r["rows_per_s"])
            result[name]["rows_per_s_all_rounds"] = [r["rows_per_s"] for r in measured]
    if src is not None:
        result["old_ref"] = old_ref
        result["throughput_ratio"] = round(result["new"]["rows_per_s"]
                                           / max(1, result["old"]["rows_per_s"]), 2)
        result["rss_growth_ratio"] = round(result["new"]["rss_mib_per_100k_rows"]
                                           / max(0.1, result["old"]["rss_mib_per_100k_rows"]), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--old-ref", default=OLD_REF,
                        help="git ref of the engine to compare with ('' to skip)")
    args = parser.parse_args()
    print(json.dumps(run(args.rows, args.old_ref or None, args.rounds)))


if __name__ == "__main__":
    main()
