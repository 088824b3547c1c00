import gevent

from electric.retry import Policy
from electric.supervisor import Supervisor
from tests.support.waiting import wait_until


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

    flaky_greenlet = supervisor.spawn("flaky", flaky)
    supervisor.spawn("steady", steady)
    flaky_greenlet.join(timeout=5)  # ends once flaky returns normally
    assert len(runs) == 3  # two crashes, then a normal return ends it
    assert supervisor.restarts["flaky"] == 2
    assert not supervisor.alive("flaky") and supervisor.alive("steady")
    seen = len(ticks)
    wait_until(lambda: len(ticks) > seen, 5, "the steady component still running")
    supervisor.stop(timeout=1)
    assert not supervisor.alive("steady")


def test_stop_interrupts_a_back_off_wait():
    supervisor = Supervisor(initial=60, cap=60)
    supervisor.spawn("crashes", lambda: 1 / 0)
    wait_until(lambda: supervisor.restarts.get("crashes") == 1, 5, "the first crash")
    with gevent.Timeout(2):
        supervisor.stop(timeout=1)
    assert not supervisor.alive("crashes")


def test_stop_names_a_component_that_outlives_its_kill_and_returns():
    from loguru import logger

    warnings = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    supervisor = Supervisor()
    killed, done = [], []

    def stubborn():
        # What a libpq wait can do: the kill surfaces as another error, and the retry goes on.
        while not done:
            try:
                gevent.sleep(60)
            except gevent.GreenletExit:
                killed.append(1)

    try:
        supervisor.spawn("stubborn", stubborn)
        gevent.sleep(0)
        with gevent.Timeout(5):
            supervisor.stop(timeout=0.2)
        assert killed and supervisor.alive("stubborn")
        assert any("still stopping after 0.2s: stubborn" in w for w in warnings), warnings
    finally:
        logger.remove(sink)
        done.append(1)
        supervisor._greenlets["stubborn"].kill(timeout=1)  # now it lets itself end
    assert not supervisor.alive("stubborn")
