"""Short fault-injection run for every CI build (not marked ``chaos``): four kill -9 cycles of
Electric (one during start-up) under two-way load, then every Postgres and Satellite view must
hold exactly what the writers committed. The long version is ``test_chaos.py`` (make chaos)."""

from tests.chaos.scenario import ChaosRun


def test_kill_restart_under_load_converges(chaos_pgs, tmp_path):
    run = ChaosRun(chaos_pgs, str(tmp_path), seed=11, gap=(1.5, 3.0), converge_timeout=45)
    try:
        report = run.run(["kill", "kill_early", "kill"])
    finally:
        run.teardown()
    print(report.line())
    assert report.kills >= 4
    assert all(n > 0 for n in report.pg_txs.values()) and all(report.sat_txs.values())
