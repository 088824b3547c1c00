"""Postgres fan-out: one source, 10 subscriber databases, native logical replication (10
subscriptions to the source) against Electric (the source and 10 subscribers as connectors
of one Electric, which publishes every transaction to all of them), same clusters, same run.

    .venv/bin/python -m bench.pg_fanout [--rows N] [--subscribers K] [--json FILE]

The source is database ``fan_native`` / ``fan_electric`` on cluster A; each subscriber is a
cluster of its own holding database ``fn`` (native) and ``fe`` (Electric) — a connector's slot
name is the same on every Postgres (POSTGRES_SLOT), and slots are per cluster. Rows/s = rows inserted on A ÷ time until *every* subscriber has all
of them. Electric's CPU time during its run (``/proc/<pid>/stat``) divided by rows ×
subscribers bounds its per-subscriber cost per row from above (it includes reading A and
writing the store); the marginal cost of the publisher's per-session work is measured
alone by :func:`per_subscriber_encode_us`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

from bench.common import emit

SCHEMA = "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL);"
CONF = {"shared_buffers": "128MB", "max_wal_size": "1GB", "max_connections": "200",
        "max_wal_senders": "40", "max_replication_slots": "40",
        "max_logical_replication_workers": "24", "max_worker_processes": "48"}
SUB_CONF = {"shared_buffers": "32MB", "max_wal_size": "512MB"}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counts(targets: list) -> list[int]:
    import psycopg2

    out = []
    for pg, db in targets:
        conn = psycopg2.connect(pg.dsn(database=db))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM items")
                out.append(cur.fetchone()[0])
        finally:
            conn.close()
    return out


def _insert(a, db: str, base: int, rows: int, batch: int) -> None:
    import psycopg2

    conn = psycopg2.connect(a.dsn(database=db))
    try:
        with conn.cursor() as cur:
            for start in range(base, base + rows, batch):
                cur.execute("INSERT INTO items SELECT g, repeat('x', 40) FROM "
                            "generate_series(%s, %s) g", (start, start + batch - 1))
                conn.commit()
    finally:
        conn.close()


def _deliver(a, src_db: str, targets: list, base: int, rows: int, batch: int,
             timeout: float) -> dict:
    before = _counts(targets)
    start = time.monotonic()
    _insert(a, src_db, base, rows, batch)
    committed = time.monotonic() - start
    deadline = start + timeout
    counts = before
    while time.monotonic() < deadline:
        counts = _counts(targets)
        if all(c - c0 >= rows for c, c0 in zip(counts, before, strict=True)):
            break
        time.sleep(0.1)
    seconds = time.monotonic() - start
    done = all(c - c0 >= rows for c, c0 in zip(counts, before, strict=True))
    return {"rows": rows, "subscribers": len(targets), "seconds": round(seconds, 2),
            "source_commit_seconds": round(committed, 2), "converged": done,
            "rows_per_s": round(rows / seconds) if done else None}


def per_subscriber_encode_us(subscribers: int = 10, transactions: int = 200,
                             rows: int = 100) -> dict:
    """The publisher's work per subscriber per row, in process: ``subscribers`` sessions
    frame the same transactions (encoded once, shared) — against every session encoding
    its own copy (the former design)."""
    from electric.changes import Column, NewRecord, Table, Transaction, utc_now
    from electric.postgres import copyboth
    from electric.postgres.lsn import Lsn
    from electric.postgres.shared_encode import SharedEncodings
    from electric.postgres.slot import SlotEncoder

    table = Table("public", "items", 16400, (Column("id", "int8", 20), Column("v", "text", 25)),
                  ("id",))
    lookup = {table.relation: table}.get
    log = [(Transaction([NewRecord(table.relation, {"id": str(t * rows + i), "v": "x" * 40})
                         for i in range(rows)], utc_now()), b"o%d" % t)
           for t in range(transactions)]

    def shared() -> float:
        cache = SharedEncodings()
        sessions = [SlotEncoder(lookup, Lsn(0), shared=cache) for _ in range(subscribers)]
        t0 = time.perf_counter()
        for tx, offset in log:
            for s in sessions:
                b"".join(s.encode_frames(tx, offset, 0).frames)
        return time.perf_counter() - t0

    def alone() -> float:
        sessions = [SlotEncoder(lookup, Lsn(0)) for _ in range(subscribers)]
        t0 = time.perf_counter()
        for tx, offset in log:
            for s in sessions:
                out = s.encode(tx, offset)
                b"".join(copyboth.xlog_data(lsn, lsn, p, 0) for lsn, p in out.messages)
        return time.perf_counter() - t0

    n = transactions * rows * subscribers
    return {"subscribers": subscribers, "rows": transactions * rows,
            "shared_us_per_row_per_subscriber": round(min(shared() for _ in range(3)) / n * 1e6, 2),
            "per_session_us_per_row_per_subscriber":
                round(min(alone() for _ in range(3)) / n * 1e6, 2)}


def run(rows: int = 50_000, subscribers: int = 10, batch: int = 1000) -> dict:
    from electric.devenv import new_cluster
    from tests.support.electric import ElectricProcess

    root = tempfile.mkdtemp(prefix="electric-pgfan-")
    os.chmod(root, 0o755)
    made: dict = {}
    names = ["a"] + [f"s{k}" for k in range(subscribers)]

    def make(name: str) -> None:
        try:
            made[name] = new_cluster(f"fan_{name}", root=os.path.join(root, name), fsync=True,
                                     extra_conf=CONF if name == "a" else {**CONF, **SUB_CONF})
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            made[name] = exc

    threads = [threading.Thread(target=make, args=(n,)) for n in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    clusters = [made.get(n) for n in names]
    electric = None
    try:
        for pg in clusters:
            if isinstance(pg, BaseException):
                raise pg
        a, subs = clusters[0], clusters[1:]
        for db in ("fan_native", "fan_electric"):
            a.create_database(db)
            a.psql(SCHEMA, database=db)
        for pg in subs:
            for db in ("fn", "fe"):
                pg.create_database(db)
                pg.psql(SCHEMA, database=db)
        a.psql("CREATE PUBLICATION fan_pub FOR ALL TABLES", database="fan_native")
        for k, pg in enumerate(subs):
            pg.psql(f"CREATE SUBSCRIPTION fan_sub_{k} CONNECTION "
                    f"'{a.dsn(database='fan_native')}' PUBLICATION fan_pub "
                    f"WITH (copy_data = false)", database="fn")
        native = [(pg, "fn") for pg in subs]
        mine = [(pg, "fe") for pg in subs]
        connectors = ";".join([f"src={a.url('fan_electric')}"]
                              + [f"s{k}={pg.url('fe')}" for k, pg in enumerate(subs)])
        electric = ElectricProcess(os.path.join(root, "electric"), env={
            "CONNECTORS": connectors, "POSTGRES_SLOT": "electric_fan", "LOG_LEVEL": "warning",
        }).start(timeout=120)
        electric.wait_for(lambda: all(electric.get_json("/api/status")["connectors"].values()),
                          timeout=180, what="every connector ready")
        out: dict = {"rows": rows, "subscribers": subscribers, "batch": batch}
        # Warm-up: one small transaction through each pipeline.
        _deliver(a, "fan_native", native, 0, batch, batch, 120)
        _deliver(a, "fan_electric", mine, 0, batch, batch, 120)
        out["native"] = _deliver(a, "fan_native", native, 10_000_000, rows, batch, 600)
        cpu0 = _cpu_seconds(electric.proc.pid)
        out["electric"] = _deliver(a, "fan_electric", mine, 10_000_000, rows, batch, 600)
        cpu = _cpu_seconds(electric.proc.pid) - cpu0
        out["electric"]["cpu_seconds"] = round(cpu, 2)
        out["electric"]["cpu_us_per_row_per_subscriber"] = round(
            cpu / (rows * (subscribers + 1)) * 1e6, 2)  # + the echo to the source
        if subscribers > 1:
            # The same rows with all but one subscriber switched off: the difference in
            # Electric's CPU is what the other subscribers cost it, per row each.
            for k, pg in enumerate(subs[1:], start=1):
                pg.psql(f"ALTER SUBSCRIPTION s{k} DISABLE", database="fe")
            deadline = time.monotonic() + 30
            while any(electric.get_json("/api/status")["detail"]["connectors"][f"s{k}"]
                      ["subscriber"].get("streaming") for k in range(1, subscribers)) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            cpu0 = _cpu_seconds(electric.proc.pid)
            one = _deliver(a, "fan_electric", mine[:1], 20_000_000, rows, batch, 600)
            one["cpu_seconds"] = round(_cpu_seconds(electric.proc.pid) - cpu0, 2)
            out["electric_one_subscriber"] = one
            out["electric"]["marginal_cpu_us_per_row_per_subscriber"] = round(
                (cpu - one["cpu_seconds"]) / (rows * (subscribers - 1)) * 1e6, 2)
        n, e = out["native"]["rows_per_s"], out["electric"]["rows_per_s"]
        out["ratio"] = round(e / n, 2) if n and e else None
        out["encode"] = per_subscriber_encode_us(subscribers)
        return out
    finally:
        if electric is not None:
            try:
                electric.terminate(timeout=10)
            except Exception:  # noqa: BLE001
                electric.kill()
        for pg in reversed(clusters):  # subscribers first: no apply-worker reconnect storms
            if pg is not None and not isinstance(pg, BaseException):
                pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_fanout")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--encode-only", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = (per_subscriber_encode_us(args.subscribers) if args.encode_only
              else run(args.rows, args.subscribers, args.batch))
    return emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
