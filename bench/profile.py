"""Sampling profile of the Electric process with py-spy, summarised as markdown.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;… count``); this module
starts/stops the recorder around a workload and turns the stacks into two top lists:
*self* time (where the CPU actually is) and *inclusive* time of Electric's own functions
(which component pays). Idle samples (the gevent hub waiting in libev) are counted apart so
the percentages are of busy time.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time

IDLE_MARKERS = ("_wait (gevent", "run (gevent/hub.py", "select (", "poll (", "epoll")


def py_spy() -> str | None:
    local = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return local if os.path.exists(local) else shutil.which("py-spy")


class Recorder:
    """``with Recorder(pid, path):`` samples ``pid`` at ``rate`` Hz while the block runs."""

    def __init__(self, pid: int, path: str, rate: int = 200):
        self.pid, self.path, self.rate = pid, path, rate
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Recorder:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.proc = subprocess.Popen(
            [exe, "record", "-p", str(self.pid), "-r", str(self.rate), "--nonblocking",
             "-f", "raw", "-o", self.path],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy needs a moment to attach; the workload must not start before
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/electric/x.py:12)`` → ``electric/x.py:func``."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("/electric/", "/bench/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            path = (marker.strip("/") + "/" + path) if marker in ("/electric/", "/bench/") \
                else path
            break
    return f"{path}:{m.group('func')}"


def summarise(path: str, top: int = 15) -> dict:
    """Self and inclusive top lists from a raw py-spy file."""
    self_time: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    busy = idle = pool = 0
    with open(path, errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = [f for f in stack.split(";") if f]
            if not frames or any(m in frames[-1] for m in IDLE_MARKERS):
                idle += n
                continue
            if any("gevent/threadpool.py" in f for f in frames):
                # A worker thread of gevent's pool: blocking calls moved off the hub
                # (fsync). Waiting for work is idle; running a task is counted apart.
                if "acquire_with_timeout" in frames[-1] or "_threading.py" in frames[-1]:
                    idle += n
                else:
                    pool += n
                continue
            busy += n
            names = [_short(f) for f in frames]
            self_time[names[-1]] += n
            for name in set(names):
                if name.startswith("electric/"):
                    incl[name] += n

    def pct(c: collections.Counter) -> list[tuple[str, float]]:
        return [(name, round(100.0 * n / max(1, busy), 1)) for name, n in c.most_common(top)]

    return {"busy_samples": busy, "idle_samples": idle, "pool_samples": pool,
            "self": pct(self_time),
            "inclusive": pct(incl)}


def to_markdown(title: str, summary: dict) -> str:
    pool = summary.get("pool_samples", 0)
    lines = [f"### {title}", "",
             f"{summary['busy_samples']} samples with the main thread (the gevent hub) busy, "
             f"{summary['idle_samples']} idle, {pool} in gevent thread-pool workers running a "
             "task (the fsyncs moved off the hub). Percentages are of the busy samples.", "",
             "| self % | function |", "|---:|---|"]
    lines += [f"| {p} | `{name}` |" for name, p in summary["self"]]
    lines += ["", "| inclusive % | Electric function |", "|---:|---|"]
    lines += [f"| {p} | `{name}` |" for name, p in summary["inclusive"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(to_markdown(sys.argv[1], summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2
                                                         else 25)))
