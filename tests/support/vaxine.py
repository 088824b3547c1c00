"""The Vaxine the ``vaxine_suite`` tests run against.

``make tests-vaxine VAXINE=host:api_port:replication_port`` sets ``ELECTRIC_TEST_VAXINE`` and
the suite uses that server (any Vaxine: a real one built from electric-sql/vaxine, or
``bin/electric vaxine``). Without it (``make tests``, CI) each test gets a fresh standalone
``bin/electric vaxine`` process on free ports, started and stopped by the fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

from electric.devenv import free_port
from tests.support.electric import ROOT
from tests.support.waiting import wait_until

ENV = "ELECTRIC_TEST_VAXINE"


@dataclass
class VaxineTarget:
    host: str
    api_port: int
    replication_port: int
    data_dir: str | None = None  # only for a standalone process this suite started
    proc: subprocess.Popen | None = None

    @property
    def external(self) -> bool:
        return self.data_dir is None

    def env(self) -> dict[str, str]:
        """Electric's settings for this Vaxine."""
        return {"VAXINE_HOST": self.host, "VAXINE_API_PORT": str(self.api_port),
                "VAXINE_REPLICATION_PORT": str(self.replication_port)}

    def _reachable(self) -> bool:
        for port in (self.api_port, self.replication_port):
            try:
                socket.create_connection((self.host, port), timeout=1).close()
            except OSError:
                return False
        return True

    def start(self) -> VaxineTarget:
        assert self.data_dir is not None, "an external Vaxine is not started by the suite"
        log = open(os.path.join(self.data_dir + ".log"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "bin", "electric"), "vaxine", "--data-dir", self.data_dir,
             "--api-port", str(self.api_port), "--replication-port", str(self.replication_port)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._reachable, timeout=30, what=f"bin/electric vaxine on {self.api_port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same data directory (standalone only)."""
        self.stop()
        self.start()


def external() -> VaxineTarget | None:
    """The Vaxine named by ``ELECTRIC_TEST_VAXINE=host:api_port:replication_port``, if set."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    parts = value.rsplit(":", 2)
    if len(parts) != 3 or not all(p.isdigit() for p in parts[1:]) or not parts[0]:
        raise ValueError(f"{ENV} (make tests-vaxine VAXINE=...) must be "
                         f"host:api_port:replication_port, not {value!r}")
    target = VaxineTarget(parts[0], int(parts[1]), int(parts[2]))
    if not target._reachable():
        raise ValueError(f"{ENV}: no Vaxine answers on {value}")
    return target


def standalone() -> VaxineTarget:
    root = tempfile.mkdtemp(prefix="electric-vaxine-")
    return VaxineTarget("127.0.0.1", free_port(), free_port(),
                        data_dir=os.path.join(root, "data")).start()


def discard(target: VaxineTarget) -> None:
    if not target.external:
        target.stop()
        shutil.rmtree(os.path.dirname(target.data_dir), ignore_errors=True)
