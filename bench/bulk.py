"""Scale workloads on the rig: one very large transaction, and memory / disk after many rows.

* ``big_transaction``: one ``INSERT … SELECT generate_series`` of N rows on A, timed until B
  holds them all, for native logical replication and for Electric, plus Electric's peak RSS
  during it (the kernel's high-water mark, reset just before).
* ``scale``: N rows replicated A → B through Electric in 1,000-row transactions; Electric's RSS
  before and after, and the embedded store's files against the table's size on A.
"""

from __future__ import annotations

import os
import time

from bench.pgpg import cpu_seconds
from bench.rig import Pipeline, connect, scalar


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _wait_count(p: Pipeline, table: str, where: str, expected: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scalar(p.b, p.db, f"SELECT count(*) FROM {table} WHERE {where}") == expected:
            return True
        time.sleep(0.1)
    return False


def big_transaction(p: Pipeline, rows: int, base: int, timeout: float = 900.0) -> dict:
    pid = p.electric.proc.pid if p.electric is not None else None
    if pid:
        _reset_peak(pid)
        before = _status(pid)["VmRSS"]
    conn = connect(p.a, p.db)
    start = time.monotonic()
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO t9 (id, v, n) SELECT g, 'bulk row ' || g, 0 FROM "
                    f"generate_series({base}, {base + rows - 1}) g")
    committed = time.monotonic()
    conn.close()
    ok = _wait_count(p, "t9", f"id >= {base} AND id < {base + rows}", rows, timeout)
    done = time.monotonic()
    out = {"rows": rows, "converged": ok, "seconds": round(done - start, 2),
           "source_commit_seconds": round(committed - start, 2)}
    if pid:
        st = _status(pid)
        out.update(rss_before_mib=round(before / 2**20, 1),
                   peak_rss_mib=round(st["VmHWM"] / 2**20, 1))
    return out


def scale(p: Pipeline, rows: int, base: int, batch: int = 1000, timeout: float = 900.0) -> dict:
    pid = p.electric.proc.pid
    p.settle()
    rss_before = _status(pid)["VmRSS"]
    conn = connect(p.a, p.db, autocommit=False)
    start = time.monotonic()
    with conn.cursor() as cur:
        for s in range(base, base + rows, batch):
            cur.execute(f"INSERT INTO t8 (id, v, n) SELECT g, 'row ' || g || ' with some text',"
                        f" 0 FROM generate_series({s}, {min(s + batch, base + rows) - 1}) g")
            conn.commit()
    conn.close()
    ok = _wait_count(p, "t8", f"id >= {base}", rows, timeout)
    seconds = time.monotonic() - start
    p.settle()
    rss_after = _status(pid)["VmRSS"]
    data_dir = p.electric.env["VAXINE_DATA_DIR"]
    store_bytes = sum(os.path.getsize(os.path.join(data_dir, f)) for f in os.listdir(data_dir)
                      if f.startswith("store.db"))
    table_bytes = scalar(p.a, p.db, "SELECT pg_total_relation_size('t8')")
    growth = (rss_after - rss_before) / 2**20
    return {"rows": rows, "converged": ok, "rows_per_s": round(rows / seconds),
            "rss_before_mib": round(rss_before / 2**20, 1),
            "rss_after_mib": round(rss_after / 2**20, 1),
            "rss_growth_mib_per_100k_rows": round(growth * 100_000 / rows, 2),
            "store_mib": round(store_bytes / 2**20, 1),
            "table_mib": round(table_bytes / 2**20, 1),
            "store_to_table": round(store_bytes / table_bytes, 2)}


def initial_sync(rig, rows: int) -> dict:
    """Existing rows: a fresh database pair with ``rows`` rows on A only. Native: B subscribes
    with ``copy_data = true``; Electric: a second Electric process with a connector to each
    (initial sync into its store, then published to B). Each timed from its start until B
    holds every row."""
    from bench.rig import SCHEMA_SQL
    from tests.support.electric import ElectricProcess

    out = {"rows": rows}
    for name in ("native", "electric"):
        db = f"bench_sync_{name}"
        for pg in (rig.a, rig.b):
            pg.create_database(db)
            pg.psql(SCHEMA_SQL, database=db)
        rig.a.psql(f"INSERT INTO t0 (id, v, n) SELECT g, 'existing row ' || g, 0 "
                   f"FROM generate_series(1, {rows}) g", database=db)
        table_bytes = scalar(rig.a, db, "SELECT pg_total_relation_size('t0')")
        start = time.monotonic()
        electric = None
        if name == "native":
            rig.a.psql("CREATE PUBLICATION sync_pub FOR ALL TABLES", database=db)
            rig.b.psql(f"CREATE SUBSCRIPTION sync_sub CONNECTION '{rig.a.dsn(database=db)}' "
                       "PUBLICATION sync_pub WITH (copy_data = true)", database=db)
        else:
            electric = ElectricProcess(os.path.join(rig.root, "electric_sync"), env={
                "CONNECTORS": f"pg_a={rig.a.url(db)};pg_b={rig.b.url(db)}",
                "POSTGRES_SLOT": "electric_sync", "LOG_LEVEL": "info"}).start(timeout=120)
        p = Pipeline(name, rig.a, rig.b, db)
        ok = _wait_count(p, "t0", "true", rows, timeout=900)
        seconds = time.monotonic() - start
        out[name] = {"seconds": round(seconds, 2), "converged": ok,
                     "rows_per_s": round(rows / seconds) if ok else None,
                     "table_mib": round(table_bytes / 2**20, 1)}
        if electric is not None:
            out[name]["peak_rss_mib"] = round(_status(electric.proc.pid)["VmHWM"] / 2**20, 1)
            # Its whole life (start, copy, publishing): robust to a busy machine.
            out[name]["electric_cpu_s"] = round(cpu_seconds(electric.proc.pid), 2)
            electric.terminate(timeout=10)
        if name == "native":
            rig.b.psql("ALTER SUBSCRIPTION sync_sub DISABLE", database=db)
            rig.b.psql("ALTER SUBSCRIPTION sync_sub SET (slot_name = NONE)", database=db)
            rig.b.psql("DROP SUBSCRIPTION sync_sub", database=db)
            rig.a.psql("SELECT pg_drop_replication_slot('sync_sub')", database=db)
    return out
