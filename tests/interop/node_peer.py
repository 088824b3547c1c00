"""Drive tests/interop/satellite_peer.mjs (the real npm electric-sql@0.1.3 client) from Python."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "interop", "satellite_peer.mjs")
CLIENT_JS = os.path.join(ROOT, "node_modules", "electric-sql", "dist", "satellite", "client.js")

_install_lock = threading.Lock()


def ensure_node_client() -> str:
    """Path of ``node``; installs the pinned npm packages (package-lock.json) if missing.

    The interop tests are part of the suite: a missing Node is a failure, not a skip."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(
            "node is required for the Satellite interop tests (apt-get install nodejs npm)"
        )
    with _install_lock:
        if not os.path.exists(CLIENT_JS):
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError("npm is required to install electric-sql@0.1.3 (npm ci)")
            subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                timeout=300,
            )
    return node


class NodePeer:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        node = ensure_node_client()
        self.proc = subprocess.Popen(
            [node, SCRIPT],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.events: queue.Queue = queue.Queue()
        self.history: list[dict] = []
        self.pending: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "stdout", "text": line}
            self.history.append(event)
            self.events.put(event)
        self.events.put({"event": "exit"})

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def wait(self, predicate, timeout: float = 10.0, what: str = "event") -> dict:
        """Next event matching ``predicate``; events skipped over stay available to later
        waits (a transaction may arrive before the ``ok`` of the command that caused it)."""
        for i, event in enumerate(self.pending):
            if predicate(event):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; saw {self.history[-20:]}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event.get("event") in ("crash", "exit"):
                raise AssertionError(f"node peer died: {event}; stderr: {self.stderr()}")
            if predicate(event):
                return event
            self.pending.append(event)

    def call(self, cmd: str, timeout: float = 10.0, **args: Any) -> dict:
        """Run a command and wait for its ok (fails the test on a fail event)."""
        self.send(cmd=cmd, **args)
        event = self.wait(
            lambda e: e.get("cmd") == cmd and e["event"] in ("ok", "fail"), timeout, f"{cmd} result"
        )
        assert event["event"] == "ok", event
        return event

    def errors(self) -> list[dict]:
        return [e for e in self.history if e.get("event") == "error"]

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read() if self.proc.stderr else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="close")
                self.proc.stdin.close()
                self.proc.wait(3)
            except Exception:
                self.proc.kill()
                self.proc.wait(3)
