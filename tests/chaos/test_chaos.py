"""Long fault-injection runs (``make chaos``): many kill -9 / restart cycles of Electric,
Postgres restarts and crashes on both sides, paused subscribers, and a standalone Vaxine killed
under Electric — all under sustained two-way load (two Postgres writers, two Satellite
clients). Each run ends with a convergence check (see ``scenario.py``)."""

import os
import random

import pytest

from tests.chaos.scenario import ChaosRun

pytestmark = pytest.mark.chaos
# More runs: CHAOS_SEEDS=1,2,3,4,5 make chaos
SEEDS = [int(s) for s in os.environ.get("CHAOS_SEEDS", "1,2").split(",") if s.strip()]


def shuffled(seed: int, *groups: list[str]) -> list[str]:
    faults = [f for group in groups for f in group]
    random.Random(seed).shuffle(faults)
    return faults


@pytest.mark.parametrize("seed", SEEDS)
def test_embedded_vaxine_kills_restarts_pauses(chaos_pgs, tmp_path, seed):
    faults = shuffled(seed, ["kill"] * 8, ["kill_early"] * 2,
                      ["restart_pg_a", "restart_pg_b", "crash_pg_a", "crash_pg_b"],
                      ["pause_sub_a", "pause_sub_b", "kill_in_catchup", "kill_while_paused",
                       "kill_with_pg_down"])
    run = ChaosRun(chaos_pgs, str(tmp_path), seed=seed, gap=(0.5, 2.5))
    try:
        report = run.run(faults)
    finally:
        run.teardown()
    print(f"\nseed {seed}: {report.line()}\n  faults: {' '.join(report.faults)}")
    assert report.kills >= 10


def test_standalone_vaxine_killed_too(chaos_pgs, tmp_path):
    faults = shuffled(3, ["kill"] * 5, ["kill_vaxine"] * 5, ["pause_sub_b", "crash_pg_a"])
    run = ChaosRun(chaos_pgs, str(tmp_path), seed=3, standalone_vaxine=True, gap=(0.5, 2.5))
    try:
        report = run.run(faults)
    finally:
        run.teardown()
    print(f"\nstandalone: {report.line()}\n  faults: {' '.join(report.faults)}")
    assert report.kills >= 5 and report.faults.count("kill_vaxine") == 5
