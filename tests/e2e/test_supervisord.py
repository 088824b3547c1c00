"""The documented supervisord commands, run as written from a clean checkout.

docs/operations.md: `.venv/bin/supervisord -c conf/supervisord.conf`, then
`supervisorctl -c conf/supervisord.conf status|stop electric|start electric|shutdown`.
"""

import json
import os
import subprocess
import urllib.request

from electric.devenv import free_port
from tests.support.checkout import clean_checkout, clean_env
from tests.support.waiting import wait_until


def test_documented_supervisord_commands_from_a_clean_checkout(tmp_path):
    root = clean_checkout(str(tmp_path / "electric"))
    assert os.path.isdir(os.path.join(root, "log")), "log/ must be shipped"
    status_port = free_port()
    # The shipped conf/electric.ini, with ports moved off the defaults and no connectors
    # (supervisord hands its environment to Electric; environment beats the ini file).
    env = clean_env(
        CONNECTORS="", STATUS_PORT=str(status_port), WEBSOCKET_PORT=str(free_port()),
        POSTGRES_REPLICATION_PORT=str(free_port()), VAXINE_API_PORT=str(free_port()),
        VAXINE_REPLICATION_PORT=str(free_port()))

    def sh(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, shell=True, cwd=root, env=env, capture_output=True,
                              text=True, timeout=60)

    def status() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/status",
                                        timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None

    electric_log = os.path.join(root, "log", "electric.log")
    started = sh(".venv/bin/supervisord -c conf/supervisord.conf")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        body = wait_until(status, timeout=30, what="Electric under supervisord answering")
        assert "vaxine" in body and "connectors" in body
        # RUNNING once it has stayed up for startsecs (3 s).
        state = wait_until(
            lambda: (out := sh(".venv/bin/supervisorctl -c conf/supervisord.conf status").stdout)
            and "RUNNING" in out and out, timeout=30, what="supervisorctl status RUNNING")
        assert state.startswith("electric "), state

        stopped = sh(".venv/bin/supervisorctl -c conf/supervisord.conf stop electric")
        assert "electric: stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        assert "STOPPED" in sh(".venv/bin/supervisorctl -c conf/supervisord.conf status").stdout
        assert "Electric stopped" in open(electric_log).read()
        assert status() is None

        again = sh(".venv/bin/supervisorctl -c conf/supervisord.conf start electric")
        assert "electric: started" in again.stdout, again.stdout + again.stderr
        wait_until(status, timeout=30, what="Electric answering after start")
    finally:
        shut = sh(".venv/bin/supervisorctl -c conf/supervisord.conf shutdown")
    assert "Shut down" in shut.stdout, shut.stdout + shut.stderr
    wait_until(lambda: not os.path.exists(os.path.join(root, "log", "supervisord.pid")),
               timeout=30, what="supervisord gone")
    # Electric's own data went where the shipped config says: under .dev_env/.
    assert os.path.isdir(os.path.join(root, ".dev_env", "vaxine_data"))
