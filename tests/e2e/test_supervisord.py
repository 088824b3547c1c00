"""conf/supervisord.conf runs Electric, which answers /api/status and stops cleanly."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

from electric.devenv import free_port
from tests.support.electric import ROOT


def test_supervisord_runs_and_stops_electric(tmp_path):
    # A copy of the shipped layout (bin/, conf/, electric/) so %(here)s paths resolve in tmp.
    for name in ("bin", "electric"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    (tmp_path / "conf").mkdir()
    (tmp_path / "log").mkdir()
    shutil.copy(os.path.join(ROOT, "conf", "supervisord.conf"), tmp_path / "conf")
    status_port = free_port()
    ini = (tmp_path / "conf" / "electric.ini")
    ini.write_text(
        "[electric]\n"
        f"status-port = {status_port}\nwebsocket-port = {free_port()}\n"
        f"postgres-replication-port = {free_port()}\nvaxine-api-port = {free_port()}\n"
        f"vaxine-replication-port = {free_port()}\nvaxine-data-dir = {tmp_path / 'vaxine'}\n"
        f"offset-storage-file = {tmp_path / 'offsets.dat'}\n"
    )
    conf = str(tmp_path / "conf" / "supervisord.conf")
    supervisord = [sys.executable, "-m", "supervisor.supervisord", "-c", conf]
    ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", conf]
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run(supervisord, check=True, env=env, timeout=30)
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            state = subprocess.run([*ctl, "status", "electric"], capture_output=True, text=True,
                                   env=env)
            if "RUNNING" in state.stdout:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/status",
                                                timeout=2) as response:
                        status = json.loads(response.read())
                        break
                except OSError:
                    pass
            time.sleep(0.3)
        assert status is not None, (tmp_path / "log" / "electric.log").read_text()
        assert "vaxine" in status and "connectors" in status
        stopped = subprocess.run([*ctl, "stop", "electric"], capture_output=True, text=True,
                                 env=env, timeout=30)
        assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        state = subprocess.run([*ctl, "status", "electric"], capture_output=True, text=True, env=env)
        assert "STOPPED" in state.stdout
        log = (tmp_path / "log" / "electric.log").read_text()
        assert "Electric stopped" in log
    finally:
        subprocess.run([*ctl, "shutdown"], capture_output=True, env=env, timeout=30)
