"""Bounded polling for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import gevent

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition",
               step: float = 0.05) -> T:
    """Poll ``predicate`` until it is truthy and return its value; AssertionError at timeout.

    Sleeps with gevent so servers running in greenlets of the test process keep serving.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
        gevent.sleep(step)
