"""``python -m bench.store_alone [--seconds S] [--writers W]``: the embedded store alone.

Ten-row transactions from W concurrent writers (greenlets) into :class:`LocalStore`, fsync
on (SQLite ``synchronous=FULL``), for S seconds; printed as one JSON line. Side by side, in the
same process and run: the engine's ceiling (the same rows inserted by plain ``sqlite3``
``executemany``, committed in batches of the size the group commit reached) and the
standalone ``electric vaxine`` server reached over loopback protobuf (what embedded mode did
before the in-process store, and what Electrics sharing one server do).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from electric.changes import NewRecord, Transaction, utc_now  # noqa: E402
from electric.store import LocalStore  # noqa: E402

REL = ("public", "t")


def _tx(w: int, i: int) -> Transaction:
    return Transaction([NewRecord(REL, {"id": f"{w}-{i}-{j}", "v": "row with some text",
                                        "n": str(j)}) for j in range(10)], utc_now())


def store(seconds: float, writers: int) -> dict:
    store = LocalStore(tempfile.mkdtemp(prefix="bench-store-"), lambda _r: ["id"])
    done = [0]
    stop = time.monotonic() + seconds

    def writer(w: int) -> None:
        i = 0
        while time.monotonic() < stop:
            store.write(_tx(w, i))
            i += 1
            done[0] += 1

    start, cpu = time.monotonic(), time.process_time()
    gevent.joinall([gevent.spawn(writer, w) for w in range(writers)])
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
    commits = store.stats["group_commits"]
    store.close()
    # CPU of the whole process (hub + commit thread) per transaction: unlike tx/s it does not
    # depend on what else a shared machine runs.
    return {"tx_per_s": round(done[0] / elapsed), "transactions": done[0],
            "tx_per_commit": round(done[0] / max(1, commits), 1),
            "cpu_us_per_tx": round(cpu / max(1, done[0]) * 1e6, 1)}


def sqlite_ceiling(transactions: int, per_commit: int) -> dict:
    """The same rows inserted with no merging, no log, no Python per row beyond the tuple."""
    path = os.path.join(tempfile.mkdtemp(prefix="bench-sqlite-"), "plain.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE r (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")
    start = time.monotonic()
    for c in range(0, transactions, per_commit):
        rows = [(f"{c}-{i}-{j}", b"row with some text") for i in range(per_commit)
                for j in range(10)]
        db.execute("BEGIN")
        db.executemany("INSERT INTO r VALUES (?, ?)", rows)
        db.execute("COMMIT")
    elapsed = time.monotonic() - start
    db.close()
    return {"tx_per_s": round(transactions / elapsed)}


def wire_server(seconds: float, writers: int) -> dict:
    from electric.vaxine import rows
    from electric.vaxine.embedded.server import EmbeddedVaxine
    from electric.vaxine.pool import VaxinePool

    server = EmbeddedVaxine(tempfile.mkdtemp(prefix="bench-v1-"), api_port=0,
                            replication_port=0).start()
    pool = VaxinePool("127.0.0.1", server.api_port, size=writers)
    done = [0]
    stop = time.monotonic() + seconds

    def writer(w: int) -> None:
        i = 0
        while time.monotonic() < stop:
            rows.write_transaction(pool, _tx(w, i), lambda _r: ["id"])
            i += 1
            done[0] += 1

    start = time.monotonic()
    gevent.joinall([gevent.spawn(writer, w) for w in range(writers)])
    elapsed = time.monotonic() - start
    pool.close()
    server.stop()
    return {"tx_per_s": round(done[0] / elapsed), "transactions": done[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", type=int, default=64)
    args = parser.parse_args()
    result = {"writers": args.writers, "seconds": args.seconds,
              "store": store(args.seconds, args.writers)}
    per_commit = max(1, int(result["store"]["tx_per_commit"]))
    result["sqlite_ceiling"] = sqlite_ceiling(result["store"]["transactions"], per_commit)
    result["wire_server"] = wire_server(min(args.seconds, 3.0), min(args.writers, 10))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
