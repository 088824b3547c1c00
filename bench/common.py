"""Pieces several benchmark scripts share: the paced producer of a load server and the
JSON result a script prints (and optionally writes) for ``python -m bench`` to collect."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any


def paced(rate: float, duration: float, produce: Callable[[int], None]) -> None:
    """Call ``produce(n)`` ``rate`` times a second for ``duration`` seconds, on schedule.

    Up to 16 calls are in flight at once (as transactions from several Postgres sessions
    would be), so one slow round trip does not lower the offered rate. Prints
    ``PRODUCER-DONE <seconds>`` on stderr at the end, which the drivers wait for. Call it in
    a monkey-patched gevent process (the import is deferred for that reason)."""
    import gevent
    import gevent.pool

    interval, start = 1.0 / rate, time.monotonic()
    in_flight = gevent.pool.Pool(16)
    for n in range(int(rate * duration)):
        delay = start + n * interval - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        in_flight.spawn(produce, n)
    in_flight.join()
    print(f"PRODUCER-DONE {time.monotonic() - start:.2f}", file=sys.stderr, flush=True)


def emit(result: Any, path: str | None, indent: int = 1) -> int:
    """Print ``result`` as JSON (the driver reads stdout) and write it to ``path`` if given."""
    text = json.dumps(result, indent=indent)
    print(text)
    if path:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    return 0


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (0 when /proc does not say)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
