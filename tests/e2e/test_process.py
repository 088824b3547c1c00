"""Electric as a real process: start-up, status, configuration errors, graceful shutdown."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.support.electric import ROOT


def run_cli(*args, env=None, timeout=30):
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run([sys.executable, "-m", "electric.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_status_shape_and_404(electric_factory):
    electric = electric_factory()
    status = electric.get_json("/api/status")
    assert set(status) >= {"connectors", "vaxine"}
    assert status["connectors"] == {}
    with urllib.request.urlopen(electric.status_url + "/api/status") as response:
        raw = response.read()
    # Compact JSON with sorted keys, like the reference.
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"), sort_keys=True).encode()
    try:
        urllib.request.urlopen(electric.status_url + "/api/nothing-here")
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404


def test_sigterm_exits_zero_within_five_seconds(electric_factory):
    electric = electric_factory()
    started = time.monotonic()
    assert electric.terminate(timeout=5) == 0
    assert time.monotonic() - started < 5
    log = electric.log()
    assert "shutting down" in log and "Electric stopped" in log
    assert "[ERROR]" not in log


def test_bad_settings_exit_2_with_one_line_naming_the_setting():
    for env, setting in [({"STATUS_PORT": "99999"}, "STATUS_PORT"),
                         ({"CONNECTORS": "a=postgresql://u:pw@h/db;a=postgresql://u@h/db"}, "CONNECTORS"),
                         ({"SATELLITE_AUTH_MODE": "jwt"}, "SATELLITE_AUTH_SIGNING_KEY")]:
        result = run_cli(env=env)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and setting in lines[0], result.stderr
        assert "pw" not in lines[0].split(setting, 1)[1]


def test_unknown_ini_key_is_refused(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[electric]\nno-such-setting = 1\n")
    result = run_cli("--config", str(ini))
    assert result.returncode == 2
    assert "no-such-setting" in result.stderr


def test_port_in_use_is_a_clear_start_up_failure(electric_factory):
    first = electric_factory()
    second = electric_factory(env={"STATUS_PORT": first.env["STATUS_PORT"]}, wait=False)
    assert second.proc.wait(timeout=20) == 2
    critical = [line for line in second.log().splitlines() if "[CRITICAL]" in line]
    assert len(critical) == 1 and "STATUS_PORT" in critical[0]


def test_help_lists_every_setting_with_env_and_default():
    from electric.config import OPTIONS

    result = run_cli("--help")
    assert result.returncode == 0
    text = "".join(result.stdout.split())
    for flag, env, default, _kind, _help in OPTIONS:
        assert flag in text and env in text
        assert "".join(f"(default: {default})".split()) in text


def test_json_log_lines(electric_factory):
    electric = electric_factory(env={"LOG_FORMAT": "json"})
    electric.terminate()
    lines = [line for line in open(electric.log_path) if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(r["message"] == "Electric started" and r["level"] == "INFO" for r in records)


def test_corrupt_offset_file_stops_start_up_with_exit_2(electric_factory, tmp_path):
    from electric.offsets.store import OffsetStore

    path = tmp_path / "offsets.dat"
    store = OffsetStore(str(path))
    for i in range(3):
        store.put_satellite_lsn(f"client{i}", b"lsn-%d" % i)
    store.close()
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # inside the first record, not the tail
    path.write_bytes(bytes(data))
    electric = electric_factory(env={"OFFSET_STORAGE_FILE": str(path)}, wait=False)
    assert electric.proc.wait(timeout=20) == 2
    critical = [line for line in electric.log().splitlines() if "[CRITICAL]" in line]
    assert len(critical) == 1
    assert "OFFSET_STORAGE_FILE" in critical[0] and str(path) in critical[0]


def test_health_and_metrics_endpoints(electric_factory):
    electric = electric_factory(env={"CONNECTORS": "pg_down=postgresql://u@127.0.0.1:1/db"})
    try:
        urllib.request.urlopen(electric.status_url + "/api/health")
        raise AssertionError("expected 503 while a connector is down")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
        body = json.loads(exc.read())
        assert body["healthy"] is False and body["connectors_down"] == ["pg_down"]
    with urllib.request.urlopen(electric.status_url + "/metrics") as response:
        text = response.read().decode()
    assert "electric_transactions_in_total" in text


def test_embedded_vaxine_data_dir_problem_names_the_setting(electric_factory, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    electric = electric_factory(env={"VAXINE_DATA_DIR": str(not_a_dir)}, wait=False)
    assert electric.proc.wait(timeout=20) == 2
    critical = [line for line in electric.log().splitlines() if "[CRITICAL]" in line]
    assert len(critical) == 1 and "VAXINE_DATA_DIR" in critical[0], electric.log()
