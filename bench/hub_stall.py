"""How long does an offset-file put freeze Electric's gevent hub?

``python -m bench.hub_stall`` — in a subprocess of its own (it monkey-patches): two
greenlets do ``put_pg_mappings`` back to back (like two publisher sessions), while a ticker
greenlet that wants to run every millisecond records how late it wakes up. With the fsync done
inline the hub is frozen for every fsync; through gevent's thread pool it keeps running.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from electric.offsets.store import OffsetStore  # noqa: E402


def measure(threadpool: bool, puts: int = 300) -> dict:
    tmp = tempfile.mkdtemp(prefix="hub-stall-")
    store = OffsetStore(os.path.join(tmp, "offsets.dat"), sync_in_threadpool=threadpool)
    lateness: list[float] = []
    running = [True]

    def ticker() -> None:
        while running[0]:
            due = time.monotonic() + 0.001
            gevent.sleep(0.001)
            lateness.append((time.monotonic() - due) * 1000)

    def session(slot: str) -> None:
        for i in range(puts):
            store.put_pg_mappings(slot, [(i + 1, b"offset-%d" % i)])

    tick = gevent.spawn(ticker)
    gevent.sleep(0.01)
    start = time.monotonic()
    gevent.joinall([gevent.spawn(session, "a"), gevent.spawn(session, "b")], raise_error=True)
    elapsed = time.monotonic() - start
    running[0] = False
    tick.join()
    store.close()
    lateness.sort()
    return {
        "fsync": "thread pool" if threadpool else "inline",
        "puts_per_s": round(2 * puts / elapsed),
        "ticker_wakeups": len(lateness),
        "hub_stall_p50_ms": round(lateness[len(lateness) // 2], 2),
        "hub_stall_p99_ms": round(lateness[int(0.99 * len(lateness))], 2),
        "hub_stall_max_ms": round(lateness[-1], 2),
    }


def main() -> int:
    puts = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    print(json.dumps([measure(False, puts), measure(True, puts)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
