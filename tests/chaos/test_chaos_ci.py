"""Short fault-injection run for every CI build (not marked ``chaos``): four kill -9 cycles of
Electric (one during start-up) under two-way load, then every Postgres and Satellite view must
hold exactly what the writers committed. The long version is ``test_chaos.py`` (make chaos).

Seed 11 by default; ``CHAOS_SEEDS=1,2,3`` (the variable ``make chaos`` uses too) runs it once
per seed, e.g. ``CHAOS_SEEDS=$(seq -s, 1 30) .venv/bin/python -m pytest -q
tests/chaos/test_chaos_ci.py`` for thirty runs in a row."""

import os

import pytest

from tests.chaos.scenario import ChaosRun

SEEDS = [int(s) for s in os.environ.get("CHAOS_SEEDS", "11").split(",") if s.strip()]


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_restart_under_load_converges(chaos_pgs, tmp_path, seed):
    run = ChaosRun(chaos_pgs, str(tmp_path), seed=seed, gap=(1.5, 3.0), converge_timeout=45)
    try:
        report = run.run(["kill", "kill_early", "kill"])
    finally:
        run.teardown()
    print(report.line())
    assert report.kills >= 4
    assert all(n > 0 for n in report.pg_txs.values()) and all(report.sat_txs.values())
