"""The one way Electric waits before trying again: a back-off policy and a retry loop.

Every loop that retries something (a supervised component restarting, a connector
provisioning, a stream reconnecting, a subscription being set up, a write to the store)
takes its delays from a :class:`Policy` through a :class:`Backoff`, so the rules are the
same everywhere and are tested once:

* the first delay is ``min``; each next one is the previous times ``factor`` (times a
  random factor in ``[1 - jitter, 1 + jitter]`` when ``jitter`` is set, so peers that failed
  together do not come back together), never more than ``max``;
* :meth:`Backoff.reset` starts over at ``min`` (call it after progress: a write that went
  through, a stream that delivered something), and :meth:`Backoff.ran` does so when an
  attempt lasted at least ``reset_after`` seconds (a component that ran for a while and then
  crashed is a new failure, not the same flapping one);
* ``total`` caps the time spent waiting: once that much has been slept, :func:`retry` gives
  up and raises the last error (``None``: never give up).

:func:`retry` runs a function until it returns, sleeping between attempts; errors that
:func:`electric.errors.is_permanent` calls permanent (or whatever ``give_up`` says) are
raised at once, since waiting cannot fix them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import gevent

from electric import errors

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """How long to wait between attempts (seconds). See the module docstring."""

    min: float
    max: float
    factor: float = 2.0
    jitter: float = 0.0
    reset_after: float | None = None
    total: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.max:
            raise ValueError(f"back-off needs 0 < min <= max, got {self.min}, {self.max}")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("back-off needs factor >= 1 and 0 <= jitter < 1")


class Backoff:
    """The delays of one retry loop under ``policy``: :meth:`next` gives the next one."""

    def __init__(self, policy: Policy, rand: Callable[[float, float], float] = random.uniform
                 ) -> None:
        self.policy = policy
        self._rand = rand
        self.current = policy.min
        self.slept = 0.0  # sum of the delays handed out since the last reset

    def next(self) -> float:
        delay = self.current
        grow = self.policy.factor
        if self.policy.jitter:
            grow *= self._rand(1 - self.policy.jitter, 1 + self.policy.jitter)
        self.current = min(self.policy.max, delay * grow)
        self.slept += delay
        return delay

    def reset(self) -> None:
        self.current = self.policy.min
        self.slept = 0.0

    def ran(self, seconds: float) -> None:
        """An attempt lasted ``seconds``: long enough (``reset_after``) starts over."""
        if self.policy.reset_after is not None and seconds >= self.policy.reset_after:
            self.reset()

    def exhausted(self) -> bool:
        """Whether ``total`` seconds have been waited already (never without ``total``)."""
        return self.policy.total is not None and self.slept >= self.policy.total

    def __iter__(self) -> Iterator[float]:
        return self

    def __next__(self) -> float:
        return self.next()


def delays(policy: Policy) -> Iterator[float]:
    """The endless sequence of delays of ``policy`` (no reset): ``min``, ``min·factor``, …"""
    return Backoff(policy)


def retry(
    fn: Callable[[], T],
    policy: Policy,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    give_up: Callable[[BaseException], bool] = errors.is_permanent,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    before: Callable[[], object] | None = None,
    sleep: Callable[[float], object] = gevent.sleep,
) -> T:
    """``fn()`` until it returns; after an error of ``retry_on`` wait the next delay and
    try again. Raised at once: errors not in ``retry_on``, those ``give_up`` accepts, and
    the last one once ``policy.total`` seconds have been waited. ``on_retry(exc, attempt,
    delay)`` reports each failure (attempt counts from 1) before the wait; ``before()``
    runs before every attempt (e.g. to wait until a dependency is up)."""
    backoff = Backoff(policy)
    attempt = 0
    while True:
        if before is not None:
            before()
        try:
            return fn()
        except retry_on as exc:
            if give_up(exc) or backoff.exhausted():
                raise
            attempt += 1
            delay = backoff.next()
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            sleep(delay)
