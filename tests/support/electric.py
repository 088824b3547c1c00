"""Run Electric as a real subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from electric.devenv import free_port
from tests.support.waiting import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class ElectricProcess:
    """Electric started with ``env`` (settings as environment variables) in ``workdir``."""

    workdir: str
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        defaults = {
            "STATUS_PORT": str(free_port()),
            "WEBSOCKET_PORT": str(free_port()),
            "POSTGRES_REPLICATION_PORT": str(free_port()),
            "VAXINE_API_PORT": str(free_port()),
            "VAXINE_REPLICATION_PORT": str(free_port()),
            "VAXINE_DATA_DIR": os.path.join(self.workdir, "vaxine"),
            "OFFSET_STORAGE_FILE": os.path.join(self.workdir, "offsets.dat"),
            "ELECTRIC_HOST": "127.0.0.1",
            "LOG_LEVEL": "debug",
        }
        self.env = {**defaults, **self.env}

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "electric.log")

    @property
    def tls(self) -> bool:
        return bool(self.env.get("TLS_CERT_FILE"))

    @property
    def status_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.env['STATUS_PORT']}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://127.0.0.1:{self.env['WEBSOCKET_PORT']}/ws"

    def replication_password(self) -> str:
        """What subscribers must give on POSTGRES_REPLICATION_PORT: the configured password,
        else the one Electric generated beside its offset file."""
        if self.env.get("POSTGRES_REPLICATION_PASSWORD"):
            return self.env["POSTGRES_REPLICATION_PASSWORD"]
        path = os.path.join(os.path.dirname(self.env["OFFSET_STORAGE_FILE"]),
                            "replication_password")
        with open(path) as f:
            return f.read().strip()

    def start(self, wait: bool = True, timeout: float = 30.0) -> ElectricProcess:
        os.makedirs(self.workdir, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
        env.update(self.env)
        env["PYTHONPATH"] = ROOT
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "electric.cli", *self.args],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> dict:
        def status() -> dict:
            if self.proc.poll() is not None:
                raise AssertionError(f"electric exited with {self.proc.returncode}\n{self.log()}")
            return self.get_json("/api/status")

        return wait_until(status, timeout, "electric to answer /api/status", step=0.1,
                          ignore=(urllib.error.URLError, ConnectionError, OSError),
                          detail=self.log)

    def get_json(self, path: str) -> dict:
        # Tests that check the certificate do so explicitly; this helper only needs answers.
        context = ssl._create_unverified_context() if self.tls else None
        with urllib.request.urlopen(self.status_url + path, timeout=5,
                                    context=context) as response:
            return json.loads(response.read())

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):
        """:func:`~tests.support.waiting.wait_until` with this process's log on failure."""
        return wait_until(predicate, timeout, what, step=0.1, detail=self.log)

    def log(self, tail: int = 80) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "--- electric log (tail) ---\n" + "".join(f.readlines()[-tail:])
        except OSError:
            return ""

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_SETTING_NAMES = {
    "VAXINE_HOST", "VAXINE_API_PORT", "VAXINE_REPLICATION_PORT", "VAXINE_CONNECTION_TIMEOUT",
    "ELECTRIC_HOST", "CONNECTORS", "POSTGRES_REPLICATION_PORT", "STATUS_PORT", "WEBSOCKET_PORT",
    "OFFSET_STORAGE_FILE", "MIGRATIONS_DIR", "MIGRATIONS_FILE_NAME_SUFFIX",
    "POSTGRES_PUBLICATION", "POSTGRES_SLOT", "GLOBAL_CLUSTER_ID", "LOG_LEVEL", "LOG_FILE",
    "LOG_FORMAT", "POSTGRES_REPLICATION_PASSWORD", "TLS_CERT_FILE", "TLS_KEY_FILE",
    "STATUS_API_TOKEN", "LISTEN_ADDRESS", "MAX_CONNECTIONS", "SATELLITE_AUTH_MODE",
    "SATELLITE_AUTH_SIGNING_KEY", "SATELLITE_AUTH_SIGNING_KEY_PREVIOUS", "SATELLITE_AUTH_ISSUER",
    "SATELLITE_AUTH_LEEWAY", "SYNC_RULES_FILE",
}
