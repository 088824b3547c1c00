"""Make psycopg2 cooperative under gevent (the psycogreen technique, without the dependency).

psycopg2 calls a process-wide *wait callback* whenever a libpq operation would block; ours
waits on the socket through gevent's hub, so other greenlets run meanwhile. Install it once
with :func:`make_green` (idempotent). Logical replication calls (``start_replication``,
``read_message``) refuse to run while a callback is installed; :func:`without_callback` lifts
it for exactly such a call, which is safe because those calls never yield: no other greenlet
can observe the gap (see the psycopg2-gevent experiment report).

Because a green connection connects asynchronously, libpq's own ``connect_timeout`` is not
enforced; :func:`connect` applies it with a gevent timeout instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent
import psycopg2
import psycopg2.extensions as ext
from gevent.socket import wait_read, wait_write

from electric.limits import DEFAULT

T = TypeVar("T")



def wait_callback(conn: Any, timeout: float | None = None) -> None:
    """Drive ``conn.poll()`` to completion, parking the greenlet while the socket is busy."""
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        if state == ext.POLL_READ:
            wait_read(conn.fileno(), timeout=timeout)
        elif state == ext.POLL_WRITE:
            wait_write(conn.fileno(), timeout=timeout)
        else:
            raise psycopg2.OperationalError(f"unexpected result from poll: {state!r}")


def make_green() -> None:
    """Install the gevent wait callback process-wide (no-op when already installed)."""
    if ext.get_wait_callback() is None:
        ext.set_wait_callback(wait_callback)


def without_callback(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a psycopg2 call that refuses wait callbacks. It must not yield (they don't)."""
    saved = ext.get_wait_callback()
    ext.set_wait_callback(None)
    try:
        return fn(*args, **kwargs)
    finally:
        ext.set_wait_callback(saved)


def connect_timeout_of(dsn: str, default: float = DEFAULT.postgres.connect_timeout) -> float:
    """The DSN's ``connect_timeout`` in seconds (libpq semantics), else ``default``."""
    try:
        value = ext.parse_dsn(dsn).get("connect_timeout")
        seconds = float(value) if value is not None else 0.0
    except (psycopg2.ProgrammingError, ValueError):
        seconds = 0.0
    return seconds if seconds > 0 else default


def connect(dsn: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
    """``psycopg2.connect`` that yields while connecting and honours a connect timeout.

    Raises ``psycopg2.OperationalError`` on timeout, like libpq would.
    """
    make_green()
    timeout = connect_timeout_of(dsn) if timeout is None else timeout
    try:
        with gevent.Timeout(timeout):
            return psycopg2.connect(dsn, **kwargs)
    except gevent.Timeout:
        raise psycopg2.OperationalError(f"timeout expired after {timeout:g}s") from None


def connect_async(dsn: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
    """Connect in psycopg2's async mode (needed for replication) and wait cooperatively."""
    timeout = connect_timeout_of(dsn) if timeout is None else timeout
    conn = psycopg2.connect(dsn, async_=True, **kwargs)
    try:
        with gevent.Timeout(timeout):
            wait_callback(conn)
    except gevent.Timeout:
        conn.close()
        raise psycopg2.OperationalError(f"timeout expired after {timeout:g}s") from None
    except BaseException:
        conn.close()
        raise
    return conn
