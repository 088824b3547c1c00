"""The dev env as the README shows it: make start_dev_env, Electric on conf/electric.ini,
make reset_dev_env, and again — from a clean checkout, on free ports (DEV_ENV_PORTS)."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request

import psycopg2
import pytest

from electric.devenv import free_port
from tests.support.checkout import clean_checkout, clean_env
from tests.support.waiting import wait_until


@pytest.fixture
def checkout():
    # Postgres runs as the postgres account, so the checkout must be reachable by it
    # (pytest's tmp_path lives under a root-only folder).
    parent = tempfile.mkdtemp(prefix="electric-checkout-")
    os.chmod(parent, 0o755)
    yield clean_checkout(os.path.join(parent, "electric"))
    shutil.rmtree(parent, ignore_errors=True)


def test_reset_dev_env_leaves_no_stale_rows(tmp_path, checkout):
    root = checkout
    pg_ports = (free_port(), free_port())
    status_port = free_port()
    env = clean_env(
        DEV_ENV_PORTS=f"{pg_ports[0]},{pg_ports[1]}",
        CONNECTORS=";".join(f"postgres_{i + 1}=postgresql://electric:password@127.0.0.1:{port}"
                            "/electric?timeout=2000" for i, port in enumerate(pg_ports)),
        STATUS_PORT=str(status_port), WEBSOCKET_PORT=str(free_port()),
        POSTGRES_REPLICATION_PORT=str(free_port()), VAXINE_API_PORT=str(free_port()),
        VAXINE_REPLICATION_PORT=str(free_port()))
    dev_root = os.path.join(root, ".dev_env")

    def make(target: str, expect: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run(["make", "--no-print-directory", target], cwd=root, env=env,
                                capture_output=True, text=True, timeout=180)
        assert (result.returncode == 0) == (expect == 0), result.stdout + result.stderr
        return result

    def sql(port: int, query: str):
        with psycopg2.connect(host="127.0.0.1", port=port, user="electric",
                              password="password", dbname="electric") as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query)
                return cur.fetchall() if cur.description else None

    def streaming() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/status",
                                        timeout=2) as response:
                detail = json.loads(response.read()).get("detail", {}).get("connectors", {})
        except OSError:
            return False
        return len(detail) == 2 and all(
            c["reader_connected"] and c["subscriber"]["streaming"] and not c["subscriber"]["held"]
            for c in detail.values())

    def run_electric(log_name: str) -> subprocess.Popen:
        log = open(tmp_path / log_name, "wb")
        proc = subprocess.Popen(["bin/electric", "--config", "conf/electric.ini"], cwd=root,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: proc.poll() is not None or streaming(), timeout=60,
                   what="Electric streaming both dev databases")
        assert proc.poll() is None, (tmp_path / log_name).read_text()
        return proc

    def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    def entries(port: int) -> set[str]:
        return {row[0] for row in sql(port, "SELECT content FROM public.entries")}

    make("start_dev_env")
    try:
        # The dev role's unqualified tables land in public, not in Electric's schema.
        for port in pg_ports:
            sql(port, "CREATE TABLE items (id int PRIMARY KEY)")
            assert sql(port, "SELECT to_regclass('public.items') IS NOT NULL") == [(True,)]
        electric = run_electric("electric-1.log")
        try:
            for i in range(3):
                sql(pg_ports[0], f"INSERT INTO entries (content) VALUES ('old {i}')")
            wait_until(lambda: len(entries(pg_ports[1])) == 3, timeout=30,
                       what="old rows replicated")
            # Not while Electric runs on the dev data: refused, nothing deleted.
            refused = make("reset_dev_env", expect=1)
            assert "stop it first" in refused.stderr
            assert os.path.isdir(os.path.join(dev_root, "vaxine_data"))
            assert len(entries(pg_ports[1])) == 3
        finally:
            stop(electric)
        assert os.path.isdir(os.path.join(dev_root, "vaxine_data"))
        assert os.path.isfile(os.path.join(dev_root, "offset_storage_data.dat"))

        make("reset_dev_env")
        assert not os.path.exists(dev_root)

        make("start_dev_env")
        electric = run_electric("electric-2.log")
        try:
            # A sentinel written after the restart arrives behind anything the log would
            # have replayed; once it is there, nothing else may be.
            sql(pg_ports[0], "INSERT INTO entries (content) VALUES ('new')")
            wait_until(lambda: "new" in entries(pg_ports[1]), timeout=30, what="new row")
            assert entries(pg_ports[1]) == {"new"}
            assert entries(pg_ports[0]) == {"new"}
        finally:
            stop(electric)
        log = (tmp_path / "electric-2.log").read_text()
        assert "WARNING" not in log, log
        # Readable at the shipped log level: no reprs with escaped quotes, no Erlang terms.
        for name in ("electric-1.log", "electric-2.log"):
            text = (tmp_path / name).read_text()
            assert "\\'" not in text and "Atom(" not in text, text
            assert "Starting replication to postgres_1 from 0/0" in text
    finally:
        make("reset_dev_env")
