import gevent

from electric.retry import Policy
from electric.supervisor import Supervisor


def test_restart_policy_comes_from_the_settings():
    assert Supervisor(initial=0.5, cap=3.0, healthy_after=20).policy == Policy(
        0.5, 3.0, reset_after=20)


def test_a_crashing_component_is_restarted_and_others_keep_running():
    supervisor = Supervisor(initial=0.01, cap=0.02)
    runs = []
    ticks = []

    def flaky():
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")

    def steady():
        while True:
            ticks.append(1)
            gevent.sleep(0.005)

    supervisor.spawn("flaky", flaky)
    supervisor.spawn("steady", steady)
    gevent.sleep(0.2)
    assert len(runs) == 3  # two crashes, then a normal return ends it
    assert supervisor.restarts["flaky"] == 2
    assert not supervisor.alive("flaky") and supervisor.alive("steady")
    assert len(ticks) > 10
    supervisor.stop(timeout=1)
    assert not supervisor.alive("steady")


def test_stop_interrupts_a_back_off_wait():
    supervisor = Supervisor(initial=60, cap=60)
    supervisor.spawn("crashes", lambda: 1 / 0)
    gevent.sleep(0.01)
    with gevent.Timeout(2):
        supervisor.stop(timeout=1)
    assert not supervisor.alive("crashes")
