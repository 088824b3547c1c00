"""PG → PG workloads run against each pipeline of the rig: throughput, latency, catch-up."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time

from bench.rig import TABLES, Pipeline, connect, scalar

# -- throughput ---------------------------------------------------------------------------


def _count_b(p: Pipeline, where: str) -> int:
    union = " UNION ALL ".join(f"SELECT count(*) AS c FROM {t} WHERE {where}" for t in TABLES)
    return int(scalar(p.b, p.db, f"SELECT sum(c) FROM ({union}) s"))


def _wait_b(p: Pipeline, where: str, expected: int, timeout: float) -> tuple[bool, int]:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = _count_b(p, where)
        if seen == expected:
            return True, seen
        time.sleep(0.02)
    return False, seen


def throughput(p: Pipeline, rows: int, batch: int = 100, timeout: float = 300.0,
               base: int = 0) -> dict:
    """Insert ``rows`` (spread over the tables, ``batch`` rows per multi-row INSERT
    transaction), then update half of them, then delete them all; each phase is timed from
    its first statement on A until B shows its outcome.

    Returns per-phase rows/s and seconds, plus the time A alone needed to commit the writes.
    """
    per_table = rows // len(TABLES)
    conn = connect(p.a, p.db, autocommit=False)
    cur = conn.cursor()
    results: dict[str, dict] = {}
    lo, hi = base, base + per_table  # ids [lo, hi) in every table

    pid = getattr(getattr(p.electric, "proc", None), "pid", None)

    def run_phase(name: str, statements, n_rows: int, where: str, expected: int) -> None:
        cpu0 = cpu_seconds(pid)
        start = time.monotonic()
        for sql in statements:
            cur.execute(sql)
            conn.commit()
        written = time.monotonic()
        ok, seen = _wait_b(p, where, expected, timeout)
        done = time.monotonic()
        results[name] = {
            "rows": n_rows, "seconds": round(done - start, 3),
            "rows_per_s": round(n_rows / (done - start)) if ok else None,
            "source_commit_seconds": round(written - start, 3),
            "converged": ok, "seen_on_b": seen,
        }
        if pid is not None:  # Electric's own CPU (all threads): robust to a busy machine
            cpu = cpu_seconds(pid) - cpu0
            results[name]["electric_cpu_s"] = round(cpu, 3)
            results[name]["electric_cpu_us_per_row"] = round(cpu / n_rows * 1e6, 1)

    def inserts():
        for t in TABLES:
            for s in range(lo, hi, batch):
                values = ",".join(f"({i},'row {i} of {t} with some text',0)"
                                  for i in range(s, min(s + batch, hi)))
                yield f"INSERT INTO {t} (id, v, n) VALUES {values}"

    def updates():  # the even ids: half of the rows, ``batch`` rows a transaction
        for t in TABLES:
            for s in range(lo, hi, 2 * batch):
                yield (f"UPDATE {t} SET n = n + 1, v = 'updated ' || id WHERE id >= {s} AND"
                       f" id < {min(s + 2 * batch, hi)} AND id % 2 = 0")

    def deletes():
        for t in TABLES:
            for s in range(lo, hi, batch):
                yield f"DELETE FROM {t} WHERE id >= {s} AND id < {min(s + batch, hi)}"

    in_range = f"id >= {lo} AND id < {hi}"
    total = per_table * len(TABLES)
    n_even = len(range(lo + (lo % 2), hi, 2)) * len(TABLES)
    run_phase("insert", inserts(), total, in_range, total)
    run_phase("update", updates(), n_even, f"{in_range} AND n = 1", n_even)
    run_phase("delete", deletes(), total, in_range, 0)
    conn.close()
    all_rows = sum(r["rows"] for r in results.values())
    all_secs = sum(r["seconds"] for r in results.values())
    ok = all(r["converged"] for r in results.values())
    results["total"] = {"rows": all_rows, "seconds": round(all_secs, 3),
                        "rows_per_s": round(all_rows / all_secs) if ok else None,
                        "converged": ok}
    if pid is not None:
        cpu = sum(r["electric_cpu_s"] for k, r in results.items() if k != "total")
        results["total"]["electric_cpu_s"] = round(cpu, 3)
        results["total"]["electric_cpu_us_per_row"] = round(cpu / all_rows * 1e6, 1)
    return results


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (0 without a pid)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- latency ------------------------------------------------------------------------------

_ids = itertools.count(1)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def latency(p: Pipeline, rate: float, duration: float, drain: float = 10.0) -> dict:
    """Commit single-row transactions on A at ``rate`` tx/s (open loop, on a fixed schedule)
    for ``duration`` seconds; latency = B's commit notification − A's commit return."""
    listener = p.listener("lat")
    writers = 1 if rate <= 250 else 4  # one connection cannot sustain 1,000 fsynced commits/s
    committed: dict[int, float] = {}
    n_total = int(rate * duration)
    behind = [0.0]

    def writer(w: int) -> None:
        conn = connect(p.a, p.db)
        cur = conn.cursor()
        for k in range(w, n_total, writers):
            due = t0 + k / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                behind[0] = max(behind[0], -delay)
            i = next(_ids)
            cur.execute("INSERT INTO lat VALUES (%s, now()::text)", (i,))
            committed[i] = time.monotonic()
        conn.close()

    t0 = time.monotonic() + 0.1
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t0
    listener.wait_for(list(committed), drain)
    listener.close()
    lat = [(listener.seen[i] - c) * 1000 for i, c in committed.items() if i in listener.seen]
    return {
        "offered_tx_per_s": rate, "achieved_tx_per_s": round(len(committed) / elapsed, 1),
        "transactions": len(committed), "delivered": len(lat),
        "p50_ms": _r(_pct(lat, 0.50)), "p95_ms": _r(_pct(lat, 0.95)),
        "p99_ms": _r(_pct(lat, 0.99)), "max_ms": _r(max(lat) if lat else None),
        "writer_max_behind_ms": round(behind[0] * 1000, 1),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


# -- catch-up -----------------------------------------------------------------------------


def catch_up(p: Pipeline, rows_per_table: int = 1000, batch: int = 100, base: int = 50_000_000,
             timeout: float = 120.0, measured=contextlib.nullcontext) -> dict:
    """Disable B's subscription, write ``rows_per_table`` rows into every table on A, enable
    it again and time how long B takes to converge (from ENABLE to the last row visible).

    ``measured()`` is entered around just the timed part (e.g. a profiler)."""
    p.set_subscription(False)
    before = p.source_written()
    conn = connect(p.a, p.db, autocommit=False)
    cur = conn.cursor()
    hi = base + rows_per_table
    n_tx = 0
    for t in TABLES:
        for s in range(base, hi, batch):
            values = ",".join(f"({i},'catch-up row {i}',0)" for i in range(s, min(s + batch, hi)))
            cur.execute(f"INSERT INTO {t} (id, v, n) VALUES {values}")
            conn.commit()
            n_tx += 1
    conn.close()
    drained = p.source_drained(before, n_tx, timeout=60)
    where = f"id >= {base} AND id < {hi}"
    expected = rows_per_table * len(TABLES)
    with measured():
        start = time.monotonic()
        p.set_subscription(True)
        ok, seen = _wait_b(p, where, expected, timeout)
        secs = time.monotonic() - start
    # Leave the tables as they were for whatever runs next.
    conn = connect(p.a, p.db)
    with conn.cursor() as cur:
        for t in TABLES:
            cur.execute(f"DELETE FROM {t} WHERE {where}")
    conn.close()
    _wait_b(p, where, 0, timeout)
    return {"rows": expected, "seconds": round(secs, 3), "converged": ok, "seen_on_b": seen,
            "source_drained_before_enable": drained}


# -- apply-side cost of the upsert trigger ------------------------------------------------

_PROBE_COLS = "(id bigint PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0)"
_STATIC_UPSERT = """
CREATE FUNCTION public.bench_probe_static_upsert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE public.probe_static t SET v = NEW.v, n = NEW.n WHERE t.id = NEW.id;
  IF FOUND THEN RETURN NULL; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER upsert BEFORE INSERT ON public.probe_static
    FOR EACH ROW EXECUTE FUNCTION public.bench_probe_static_upsert();
ALTER TABLE public.probe_static ENABLE REPLICA TRIGGER upsert;
"""


def trigger_cost(rig, rows: int = 10_000, repeat: int = 3) -> dict:
    """What B's apply worker pays per row for Electric's upsert trigger.

    On B's ``bench_native`` database (which publishes nothing, so these rows go nowhere),
    four probe tables get one ``rows``-row INSERT each as ``session_replication_role =
    replica`` (like the apply worker): no trigger, the generic
    ``electric.replication_upsert()`` (copied from B's ``bench_electric``; Electric's only
    trigger before the per-table functions, its fallback now), a hand-written per-table
    trigger with static SQL, and the per-table function Electric generates today
    (``electric.upsert_function``, copied likewise). Best of ``repeat``, in ms.
    """
    from bench.rig import ELECTRIC_DB, NATIVE_DB

    b = rig.b
    fn = b.psql("SELECT pg_get_functiondef('electric.replication_upsert'::regproc)",
                database=ELECTRIC_DB)
    b.psql("CREATE SCHEMA IF NOT EXISTS electric", database=NATIVE_DB)
    b.psql(fn, database=NATIVE_DB)
    gen = b.psql("SELECT pg_get_functiondef('electric.upsert_function'::regproc)",
                 database=ELECTRIC_DB)
    b.psql(gen, database=NATIVE_DB)
    # Qualified names: the role is called "electric", so "$user" would pick that schema.
    b.psql(f"CREATE TABLE public.probe_plain {_PROBE_COLS};"
           f" CREATE TABLE public.probe_generic {_PROBE_COLS};"
           f" CREATE TABLE public.probe_static {_PROBE_COLS};"
           f" CREATE TABLE public.probe_generated {_PROBE_COLS};"
           " CREATE TRIGGER upsert BEFORE INSERT ON public.probe_generic FOR EACH ROW EXECUTE"
           " FUNCTION electric.replication_upsert();"
           " ALTER TABLE public.probe_generic ENABLE REPLICA TRIGGER upsert;" + _STATIC_UPSERT,
           database=NATIVE_DB)
    generated = b.psql("SELECT electric.upsert_function('public.probe_generated'::regclass)",
                       database=NATIVE_DB).strip()
    b.psql(f"CREATE TRIGGER upsert BEFORE INSERT ON public.probe_generated FOR EACH ROW"
           f" EXECUTE FUNCTION {generated}();"
           " ALTER TABLE public.probe_generated ENABLE REPLICA TRIGGER upsert;",
           database=NATIVE_DB)
    conn = connect(b, NATIVE_DB, autocommit=False)
    cur = conn.cursor()
    cur.execute("SET session_replication_role = replica")
    values = ",".join(f"({i}, 'row {i} with some text', 0)" for i in range(rows))
    out: dict = {"rows": rows}
    for table in ("probe_plain", "probe_generic", "probe_static", "probe_generated"):
        best = float("inf")
        for _ in range(repeat):
            start = time.monotonic()
            cur.execute(f"INSERT INTO public.{table} (id, v, n) VALUES {values}")
            conn.commit()
            best = min(best, time.monotonic() - start)
            cur.execute(f"DELETE FROM public.{table}")
            conn.commit()
        out[table.removeprefix("probe_") + "_ms"] = round(best * 1000, 1)
    conn.close()
    b.psql("DROP TABLE public.probe_plain, public.probe_generic, public.probe_static,"
           " public.probe_generated; DROP FUNCTION public.bench_probe_static_upsert();"
           f" DROP FUNCTION {generated}()", database=NATIVE_DB)
    for key in ("generic", "static", "generated"):
        out[f"{key}_us_per_row_over_plain"] = round(
            (out[f"{key}_ms"] - out["plain_ms"]) * 1000 / rows, 1)
    return out


def use_static_upsert(p: Pipeline) -> None:
    """What-if: replace Electric's generic upsert trigger on B's tables by per-table triggers
    with fixed SQL and the same semantics (update by primary key, skip the INSERT when the
    row existed). Same trigger name, so Electric's idempotent re-install would put the
    generic one back; this only lasts for the rest of the run."""
    sql = []
    for t in TABLES:
        sql.append(f"""
CREATE OR REPLACE FUNCTION public.bench_static_upsert_{t}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE public.{t} t SET v = NEW.v, n = NEW.n WHERE t.id = NEW.id;
  IF FOUND THEN RETURN NULL; END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER electric_upsert BEFORE INSERT ON public.{t}
    FOR EACH ROW EXECUTE FUNCTION public.bench_static_upsert_{t}();
ALTER TABLE public.{t} ENABLE REPLICA TRIGGER electric_upsert;""")
    p.b.psql("\n".join(sql), database=p.db)
