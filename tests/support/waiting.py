"""The one way tests wait: poll a condition, bounded; never sleep as a barrier."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import gevent

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition",
               step: float = 0.05, ignore: tuple[type[BaseException], ...] = (),
               detail: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it is truthy and return its value; AssertionError at timeout.

    ``ignore``: exceptions that mean "not yet" (the thing polled may be restarting); the last
    one is reported at timeout. ``detail()`` adds context to the failure (e.g. a process's
    log). Sleeps with gevent so servers running in greenlets of the test process keep serving
    (outside a gevent program it is an ordinary sleep).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignore as exc:
            value = exc  # falsy for our purpose: keep polling, report it at timeout
            ok = False
        else:
            ok = bool(value)
        if ok:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last value {value!r}{extra}")
        gevent.sleep(step)
