import pytest

from electric import errors
from electric.retry import Backoff, Policy, delays, retry


def take(it, n):
    return [next(it) for _ in range(n)]


def test_delays_double_up_to_the_cap():
    assert take(delays(Policy(0.5, 3.0)), 5) == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_reset_starts_over_and_ran_resets_only_after_a_long_run():
    b = Backoff(Policy(1.0, 8.0, reset_after=30.0))
    assert take(b, 3) == [1.0, 2.0, 4.0]
    b.ran(29.0)
    assert b.next() == 8.0
    b.ran(30.0)
    assert b.next() == 1.0
    b.next()
    b.reset()
    assert b.next() == 1.0


def test_jitter_scales_each_step_within_bounds():
    b = Backoff(Policy(0.01, 1.0, jitter=0.2), rand=lambda lo, hi: hi)
    assert b.next() == 0.01  # the first delay is the minimum, exactly
    assert b.next() == pytest.approx(0.01 * 2 * 1.2)
    b = Backoff(Policy(0.01, 1.0, jitter=0.2))
    got = take(b, 4)
    for before, after in zip(got, got[1:], strict=False):
        assert before * 1.6 <= after <= before * 2.4


@pytest.mark.parametrize("kwargs", [dict(min=0, max=1), dict(min=2, max=1),
                                    dict(min=1, max=2, jitter=1), dict(min=1, max=2, factor=0.5)])
def test_a_policy_that_makes_no_sense_is_refused(kwargs):
    with pytest.raises(ValueError):
        Policy(**kwargs)


def test_retry_runs_until_success_reporting_each_failure():
    calls, slept, reported = [], [], []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("away")
        return "done"

    got = retry(fn, Policy(0.1, 1.0), sleep=slept.append,
                on_retry=lambda exc, n, d: reported.append((str(exc), n, d)))
    assert got == "done"
    assert slept == [0.1, 0.2]
    assert reported == [("away", 1, 0.1), ("away", 2, 0.2)]


def test_retry_raises_permanent_errors_and_others_not_retried_at_once():
    slept = []
    with pytest.raises(ValueError):
        retry(lambda: int("x"), Policy(0.1, 1.0), sleep=slept.append)
    with pytest.raises(KeyError):
        retry(lambda: {}["k"], Policy(0.1, 1.0), retry_on=OSError, sleep=slept.append)
    assert slept == []


def test_retry_gives_up_after_total_waited():
    slept = []

    def fn():
        raise OSError("still away")

    with pytest.raises(OSError, match="still away"):
        retry(fn, Policy(1.0, 4.0, total=10.0), sleep=slept.append)
    assert slept == [1.0, 2.0, 4.0, 4.0]  # 11 s waited: the next failure is final


def test_before_runs_ahead_of_every_attempt():
    events = []

    def fn():
        events.append("try")
        if events.count("try") < 2:
            raise errors.Transient("not yet")

    retry(fn, Policy(0.1, 1.0), before=lambda: events.append("wait"), sleep=lambda _: None)
    assert events == ["wait", "try", "wait", "try"]
