import pytest

from electric.limits import ByteBudget


def test_reservations_fit_until_the_capacity_then_are_refused_whole():
    budget = ByteBudget(100)
    assert budget.try_reserve(60)
    assert not budget.try_reserve(41)
    assert budget.used == 60  # a refused reservation takes nothing
    assert budget.try_reserve(40)
    budget.release(60)
    assert budget.used == 40 and budget.try_reserve(60)


def test_release_never_goes_negative_and_negative_sizes_are_refused():
    budget = ByteBudget(10)
    budget.release(5)
    assert budget.used == 0
    with pytest.raises(ValueError):
        budget.try_reserve(-1)
