"""One chaos run: two Postgres, Electric (embedded or standalone Vaxine), writers, faults.

``ChaosRun(...).run(faults)`` starts everything, injects the listed faults at random moments
while the writers keep going, then stops the writers and checks convergence:

* every Satellite transaction is acked (the writers resend until it is);
* both Postgres hold exactly the expected rows (union of every writer's final state);
* every Satellite client's view holds exactly the same rows.

Faults:
  ``kill``         kill -9 Electric at a random moment, restart it on the same offset file and
                   Vaxine data directory (waits until it answers /api/status)
  ``kill_early``   restart Electric and kill -9 it again while it is still starting up
  ``restart_pg_a`` / ``restart_pg_b``   fast restart of that Postgres (source and subscriber)
  ``crash_pg_a`` / ``crash_pg_b``       immediate stop (crash, recovery on start) of it
  ``pause_sub_a`` / ``pause_sub_b``     ALTER SUBSCRIPTION … DISABLE, wait, ENABLE
  ``kill_vaxine``  kill -9 the standalone Vaxine and restart it (standalone mode only)
  ``kill_in_catchup``  pause B's subscription for a while (a backlog builds), resume it and
                   kill -9 Electric while B is catching up
  ``kill_while_paused``  pause B's subscription, kill -9 and restart Electric, resume
  ``kill_with_pg_down``  stop A, kill -9 and restart Electric while A is down, start A
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field

from electric.devenv import DEV_SCHEMA_SQL, PgCluster
from tests.chaos.harness import (
    PgWriter,
    SatWriter,
    StandaloneVaxine,
    diff,
    read_tables,
    rss_kb,
)
from tests.support.electric import ElectricProcess
from tests.support.postgres import drop_database


@dataclass
class ChaosReport:
    faults: list[str] = field(default_factory=list)
    kills: int = 0
    pg_txs: dict[str, int] = field(default_factory=dict)
    pg_in_doubt: int = 0
    sat_txs: dict[str, int] = field(default_factory=dict)
    sat_resent: int = 0
    sat_connects: int = 0
    rows: int = 0
    converge_s: float = 0.0
    total_s: float = 0.0
    max_rss_kb: int = 0

    def line(self) -> str:
        return (f"faults={len(self.faults)} kills={self.kills} pg_txs={self.pg_txs} "
                f"in_doubt={self.pg_in_doubt} sat_txs={self.sat_txs} resent={self.sat_resent} "
                f"sat_connects={self.sat_connects} rows={self.rows} "
                f"converge={self.converge_s:.1f}s total={self.total_s:.1f}s "
                f"max_rss={self.max_rss_kb // 1024}MiB")


class ChaosRun:
    def __init__(self, pgs: tuple[PgCluster, PgCluster], workdir: str, *, seed: int,
                 sat_clients: int = 2, standalone_vaxine: bool = False,
                 gap: tuple[float, float] = (0.5, 2.0), converge_timeout: float = 90.0):
        self.pgs = pgs
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.seed = seed
        self.sat_clients = sat_clients
        self.gap = gap
        self.converge_timeout = converge_timeout
        self.db = f"chaos_{uuid.uuid4().hex[:8]}"
        self.vaxine = StandaloneVaxine(f"{workdir}/vaxine-standalone") \
            if standalone_vaxine else None
        self.electric: ElectricProcess | None = None
        self.pg_writers: list[PgWriter] = []
        self.sat_writers: list[SatWriter] = []
        self.report = ChaosReport()

    # -- set-up / tear-down --------------------------------------------------------------
    def setup(self) -> None:
        for pg in self.pgs:
            pg.create_database(self.db)
            pg.psql(DEV_SCHEMA_SQL, database=self.db)
        env = {"CONNECTORS": f"pg_a={self.pgs[0].url(self.db)};pg_b={self.pgs[1].url(self.db)}",
               "POSTGRES_SLOT": f"slot_{self.db}", "LOG_LEVEL": "info"}
        if self.vaxine is not None:
            self.vaxine.start()
            env.update(self.vaxine.env())
        self.electric = ElectricProcess(f"{self.workdir}/electric", env=env)
        self.electric.start(timeout=60)
        self.wait_connectors()

    def teardown(self) -> None:
        for w in self.sat_writers:
            w.quit_event.set()
        for w in self.pg_writers:
            w.stop_event.set()
        if self.electric is not None:
            self.electric.kill()
        if self.vaxine is not None:
            self.vaxine.kill()
        for pg in self.pgs:
            try:
                if not pg.is_running():
                    pg.start()
                drop_database(pg, self.db)
            except Exception:  # noqa: BLE001 - best effort clean-up
                pass

    def wait_connectors(self, timeout: float = 60.0) -> None:
        e = self.electric
        e.wait_for(lambda: all(e.get_json("/api/status")["connectors"].values()),
                   timeout=timeout, what="both connectors ready")

    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.electric.env['WEBSOCKET_PORT']}/ws"

    # -- faults ------------------------------------------------------------------------------
    def _sample_rss(self) -> None:
        try:
            self.report.max_rss_kb = max(self.report.max_rss_kb, rss_kb(self.electric.proc.pid))
        except (OSError, AssertionError):
            pass

    def inject(self, fault: str) -> None:
        e = self.electric
        self.report.faults.append(fault)
        if fault == "kill":
            e.kill()
            self.report.kills += 1
            e.start(timeout=60)
        elif fault == "kill_early":
            e.kill()
            self.report.kills += 1
            e.start(wait=False)
            time.sleep(self.rng.uniform(0.05, 1.5))
            e.kill()
            self.report.kills += 1
            e.start(timeout=60)
        elif fault.startswith(("restart_pg_", "crash_pg_")):
            pg = self.pgs[0 if fault.endswith("_a") else 1]
            if fault.startswith("crash"):
                pg.stop("immediate")
            else:
                pg.stop("fast")
            time.sleep(self.rng.uniform(0.1, 1.0))
            pg.start()
        elif fault.startswith("pause_sub_"):
            pg, name = (self.pgs[0], "pg_a") if fault.endswith("_a") else (self.pgs[1], "pg_b")
            pg.psql(f'ALTER SUBSCRIPTION "{name}" DISABLE', database=self.db)
            time.sleep(self.rng.uniform(1.0, 3.0))
            pg.psql(f'ALTER SUBSCRIPTION "{name}" ENABLE', database=self.db)
        elif fault == "kill_with_pg_down":
            pg = self.pgs[0]
            pg.stop("fast")
            e.kill()
            self.report.kills += 1
            e.start(timeout=60)
            time.sleep(self.rng.uniform(0.5, 2.0))
            pg.start()
        elif fault in ("kill_in_catchup", "kill_while_paused"):
            pg = self.pgs[1]
            pg.psql('ALTER SUBSCRIPTION "pg_b" DISABLE', database=self.db)
            time.sleep(self.rng.uniform(2.0, 4.0))
            if fault == "kill_while_paused":
                e.kill()
                self.report.kills += 1
                e.start(timeout=60)
                pg.psql('ALTER SUBSCRIPTION "pg_b" ENABLE', database=self.db)
            else:
                pg.psql('ALTER SUBSCRIPTION "pg_b" ENABLE', database=self.db)
                time.sleep(self.rng.uniform(0.2, 1.5))
                e.kill()
                self.report.kills += 1
                e.start(timeout=60)
        elif fault == "kill_vaxine":
            assert self.vaxine is not None
            self.vaxine.kill()
            time.sleep(self.rng.uniform(0.1, 1.0))
            self.vaxine.start()
        else:
            raise ValueError(fault)

    # -- the run -------------------------------------------------------------------------------
    def start_writers(self) -> None:
        for i, pg in enumerate(self.pgs):
            self.pg_writers.append(PgWriter(f"pg{i}", pg.dsn(database=self.db),
                                            seed=self.seed * 10 + i))
        for i in range(self.sat_clients):
            self.sat_writers.append(SatWriter(f"chaos-sat-{i}-{self.db}", self.ws_url,
                                              seed=self.seed * 10 + 5 + i))
        for w in (*self.pg_writers, *self.sat_writers):
            w.start()

    def run(self, faults: list[str]) -> ChaosReport:
        started = time.monotonic()
        self.setup()
        self.start_writers()
        time.sleep(self.rng.uniform(*self.gap))
        for fault in faults:
            self.inject(fault)
            self._sample_rss()
            time.sleep(self.rng.uniform(*self.gap))
            self._check_writers_alive()
        self.finish()
        self.report.total_s = time.monotonic() - started
        return self.report

    def _check_writers_alive(self) -> None:
        for w in (*self.pg_writers, *self.sat_writers):
            if w.failure is not None:
                raise w.failure

    def finish(self) -> None:
        for w in self.pg_writers:
            w.stop()
        t0 = time.monotonic()
        for w in self.sat_writers:
            w.finish(timeout=max(5.0, self.converge_timeout - (time.monotonic() - t0)))
        expected: dict = {}
        for w in (*self.pg_writers, *self.sat_writers):
            overlap = set(expected) & set(w.model)
            assert not overlap, f"writers share rows: {sorted(overlap)[:3]}"
            expected.update(w.model)
        self.report.rows = len(expected)
        self.report.pg_txs = {w.label: w.committed for w in self.pg_writers}
        self.report.pg_in_doubt = sum(w.in_doubt for w in self.pg_writers)
        self.report.sat_txs = {w.client_id.split("-")[2]: len(w.txs) for w in self.sat_writers}
        self.report.sat_resent = sum(w.resent for w in self.sat_writers)
        self.report.sat_connects = sum(w.connects for w in self.sat_writers)
        violations = [v for w in self.sat_writers for v in w.violations]
        assert not violations, violations

        t1 = time.monotonic()
        deadline = t1 + self.converge_timeout
        for i, pg in enumerate(self.pgs):
            actual: dict = {}
            while time.monotonic() < deadline:
                try:
                    actual = read_tables(pg.dsn(database=self.db))
                except Exception:  # noqa: BLE001 - keep polling until the deadline
                    actual = {}
                if actual == expected:
                    break
                time.sleep(0.5)
            assert actual == expected, (
                f"postgres {'ab'[i]} did not converge in {self.converge_timeout}s: "
                f"{diff(expected, actual)}\n{self.electric.log(40)}")
        for w in self.sat_writers:
            while time.monotonic() < deadline and w.snapshot_view() != expected:
                time.sleep(0.3)
            assert w.snapshot_view() == expected, (
                f"{w.client_id} view did not converge: {diff(expected, w.snapshot_view())}; "
                f"stream txs {w.stream_txs}, recent: {w.errors[-5:]}")
        self.report.converge_s = time.monotonic() - t1
        self._sample_rss()
        for w in self.sat_writers:
            w.quit()
        log = self.electric.log(tail=1_000_000)
        assert "Traceback" not in log, log[-4000:]
        # Nothing dropped on the way: no change skipped, no reader held for good.
        skips = [line for line in log.splitlines() if "skipping change" in line]
        assert not skips, skips[:5]
