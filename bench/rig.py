"""The benchmark rig: two Postgres clusters A and B, replicated two ways in the same run.

* database ``bench_native`` on A and B: stock ``CREATE PUBLICATION`` on A and
  ``CREATE SUBSCRIPTION`` on B (what users would otherwise run);
* database ``bench_electric`` on A and B: one Electric process (embedded Vaxine) with a
  connector to each, so A → Electric → Vaxine → Electric's publisher → B.

The same tables live in both databases, so every workload runs unchanged against either
pipeline. Both pipelines share the clusters (and the machine), which is the point: absolute
times on a shared machine are noise, the ratio between the two is the number that matters.
Logical decoding is per cluster, so each pipeline's walsender also reads (and discards) the
other database's WAL: a small, symmetric cost.

"Visible on B" is observed without polling: an ``ENABLE ALWAYS`` trigger on B's tables calls
``pg_notify`` (delivered when the apply worker commits) and a listener records arrival times.
"""

from __future__ import annotations

import os
import select
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

import psycopg2

from electric.devenv import PgCluster, new_cluster

NATIVE_DB = "bench_native"
ELECTRIC_DB = "bench_electric"
N_TABLES = 10
TABLES = [f"t{i}" for i in range(N_TABLES)]

SCHEMA_SQL = "\n".join(
    f"CREATE TABLE {t} (id bigint PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0);"
    for t in TABLES
) + """
CREATE TABLE lat (id bigint PRIMARY KEY, sent text NOT NULL);
CREATE TABLE warm (id bigint PRIMARY KEY, v text NOT NULL);
CREATE TABLE sat_ingest (id text PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0);
"""

# On B only: report each applied row of ``lat``/``warm`` to listeners at commit time.
NOTIFY_SQL = """
CREATE FUNCTION bench_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('seen_' || TG_TABLE_NAME, NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER bench_seen AFTER INSERT OR UPDATE ON lat
    FOR EACH ROW EXECUTE FUNCTION bench_seen();
ALTER TABLE lat ENABLE ALWAYS TRIGGER bench_seen;
CREATE TRIGGER bench_seen AFTER INSERT OR UPDATE ON warm
    FOR EACH ROW EXECUTE FUNCTION bench_seen();
ALTER TABLE warm ENABLE ALWAYS TRIGGER bench_seen;
"""

ELECTRIC_SLOT = "electric_bench"
NATIVE_SUB = "bench_native_sub"


def connect(pg: PgCluster, db: str, autocommit: bool = True):
    conn = psycopg2.connect(pg.dsn(database=db))
    conn.autocommit = autocommit
    return conn


def scalar(pg: PgCluster, db: str, sql: str, args=None):
    conn = connect(pg, db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


class Listener:
    """LISTENs on B for ``seen_<channel>`` and records the arrival time of every id."""

    def __init__(self, pg: PgCluster, db: str, channel: str):
        self.conn = connect(pg, db)
        with self.conn.cursor() as cur:
            cur.execute(f"LISTEN seen_{channel}")
        self.seen: dict[int, float] = {}
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            if select.select([self.conn], [], [], 0.2)[0]:
                self.conn.poll()
                now = time.monotonic()
                with self.cond:
                    while self.conn.notifies:
                        n = self.conn.notifies.pop(0)
                        self.seen.setdefault(int(n.payload), now)
                    self.cond.notify_all()

    def wait_for(self, ids, timeout: float) -> bool:
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        with self.cond:
            while not wanted.issubset(self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
        return True

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.conn.close()


@dataclass
class Pipeline:
    """One way of getting A's changes to B: ``native`` or ``electric``."""

    name: str
    a: PgCluster
    b: PgCluster
    db: str
    warm_ids: list = field(default_factory=lambda: [0])
    electric: object = None  # the ElectricProcess, for the electric pipeline

    def listener(self, channel: str) -> Listener:
        return Listener(self.b, self.db, channel)

    def warm_up(self, timeout: float = 60.0) -> float:
        """Commit one row on A and wait until B applied it; returns the seconds it took."""
        listener = self.listener("warm")
        try:
            self.warm_ids[0] += 1
            wid = self.warm_ids[0]
            start = time.monotonic()
            conn = connect(self.a, self.db)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO warm VALUES (%s, 'w') ON CONFLICT (id) DO UPDATE"
                            " SET v = EXCLUDED.v || 'w'", (wid,))
            conn.close()
            if not listener.wait_for([wid], timeout):
                raise RuntimeError(f"{self.name}: A → B not flowing after {timeout}s")
            return time.monotonic() - start
        finally:
            listener.close()

    # -- subscriber on/off (catch-up) -------------------------------------------------

    @property
    def subscription(self) -> str:
        return NATIVE_SUB if self.name == "native" else "pg_b"

    def set_subscription(self, enabled: bool) -> None:
        conn = connect(self.b, self.db)
        with conn.cursor() as cur:
            cur.execute(f'ALTER SUBSCRIPTION "{self.subscription}" '
                        f'{"ENABLE" if enabled else "DISABLE"}')
        conn.close()
        if not enabled:  # wait for the apply worker to go away
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                pid = scalar(self.b, self.db, "SELECT pid FROM pg_stat_subscription s JOIN"
                             " pg_subscription p ON p.oid = s.subid WHERE p.subname = %s",
                             (self.subscription,))
                if pid is None:
                    return
                time.sleep(0.05)

    def settle(self, timeout: float = 60.0) -> float:
        """Wait until Electric has worked off any backlog before the next workload starts.

        B's WAL holds the echo of everything B applied, which Electric's connector to B reads
        and drops by origin; a marker row committed on B after it reaches A only once that
        echo has been read. Returns the seconds waited (native: nothing to wait for)."""
        if self.electric is None:
            return 0.0
        start = time.monotonic()
        self.warm_ids[0] += 1
        marker = 1_000_000 + self.warm_ids[0]
        conn = connect(self.b, self.db)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO warm VALUES (%s, 'settle')", (marker,))
        conn.close()
        while time.monotonic() - start < timeout:
            if scalar(self.a, self.db, "SELECT count(*) FROM warm WHERE id = %s", (marker,)):
                break
            time.sleep(0.05)
        self.warm_up(timeout=max(1.0, timeout - (time.monotonic() - start)))
        return time.monotonic() - start

    def source_written(self) -> int:
        """Electric: transactions its connector to A has written into Vaxine so far."""
        if self.electric is None:
            return 0
        status = self.electric.get_json("/api/status")
        # Two layouts seen: detail.connectors.<name> (current) and connector_detail.<name>.
        connectors = status.get("detail", {}).get("connectors") or \
            status.get("connector_detail", {})
        return int(connectors.get("pg_a", {}).get("transactions_written", 0))

    def source_drained(self, before: int, transactions: int, timeout: float = 120.0) -> bool:
        """Electric: ``transactions`` more than ``before`` are in Vaxine (native: trivially)."""
        if self.electric is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.source_written() >= before + transactions:
                return True
            time.sleep(0.05)
        return False


class Rig:
    """Clusters A and B, both pipelines set up, Electric running. ``close()`` tears down."""

    def __init__(self, workdir: str | None = None, fsync: bool = True,
                 electric_log_level: str = "info"):
        self.root = workdir or tempfile.mkdtemp(prefix="electric-bench-")
        os.chmod(self.root, 0o755)
        self.fsync = fsync
        self.log_level = electric_log_level
        self.a: PgCluster | None = None
        self.b: PgCluster | None = None
        self.electric = None
        self.pipelines: dict[str, Pipeline] = {}

    def start(self) -> Rig:
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> Rig:
        # Same settings on both: the stock subscriber's defaults, fsync as requested.
        extra = {"shared_buffers": "128MB", "max_wal_size": "1GB"}
        # initdb is most of the set-up time: run both at once.
        made: dict[str, PgCluster | BaseException] = {}

        def make(name: str) -> None:
            try:
                made[name] = new_cluster(f"bench_{name}", root=os.path.join(self.root, name),
                                         fsync=self.fsync, extra_conf=extra)
            except BaseException as exc:  # re-raised below, in the caller's thread
                made[name] = exc

        threads = [threading.Thread(target=make, args=(n,)) for n in ("a", "b")]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.a, self.b = made.get("a"), made.get("b")
        for value in (self.a, self.b):
            if isinstance(value, BaseException):
                self.a = self.a if isinstance(self.a, PgCluster) else None
                self.b = self.b if isinstance(self.b, PgCluster) else None
                raise value
        for pg in (self.a, self.b):
            for db in (NATIVE_DB, ELECTRIC_DB):
                pg.create_database(db)
                pg.psql(SCHEMA_SQL, database=db)
        for db in (NATIVE_DB, ELECTRIC_DB):
            self.b.psql(NOTIFY_SQL, database=db)
        self._start_native()
        self._start_electric()
        self.pipelines["native"].warm_up()
        self.pipelines["electric"].warm_up()
        return self

    def _start_native(self) -> None:
        self.a.psql("CREATE PUBLICATION bench_pub FOR ALL TABLES", database=NATIVE_DB)
        conninfo = self.a.dsn(database=NATIVE_DB)
        self.b.psql(f"CREATE SUBSCRIPTION {NATIVE_SUB} CONNECTION '{conninfo}' "
                    f"PUBLICATION bench_pub WITH (copy_data = false)", database=NATIVE_DB)
        self.pipelines["native"] = Pipeline("native", self.a, self.b, NATIVE_DB)

    def _start_electric(self) -> None:
        from tests.support.electric import ElectricProcess

        connectors = f"pg_a={self.a.url(ELECTRIC_DB)};pg_b={self.b.url(ELECTRIC_DB)}"
        self.electric = ElectricProcess(os.path.join(self.root, "electric"), env={
            "CONNECTORS": connectors, "POSTGRES_SLOT": ELECTRIC_SLOT,
            "LOG_LEVEL": self.log_level,
        }).start(timeout=60)
        self.electric.wait_for(
            lambda: all(self.electric.get_json("/api/status")["connectors"].values()),
            timeout=60, what="both connectors ready")
        self.pipelines["electric"] = Pipeline("electric", self.a, self.b, ELECTRIC_DB,
                                             electric=self.electric)

    def close(self) -> None:
        if self.electric is not None:
            try:
                self.electric.terminate(timeout=10)
            except Exception:
                self.electric.kill()
        for pg in (self.b, self.a):  # subscriber first: no apply-worker reconnect storms
            if pg is not None:
                pg.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
