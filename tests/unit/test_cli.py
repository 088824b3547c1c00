"""The operator's first contact: --help, commands with settings around them, bad ini files."""

import json
import os
import subprocess
import sys

import pytest

from electric import cli, config
from tests.support.electric import ROOT

ELECTRIC = [sys.executable, os.path.join(ROOT, "bin", "electric")]


def run(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k not in {"STATUS_PORT", "CONNECTORS"}}
    return subprocess.run([*ELECTRIC, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60)


def test_help_lists_every_command_with_one_line_and_no_library_text():
    result = run("--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for name in ("migrate", "gen-token", "connector", "vaxine"):
        described = [line for line in lines if line.startswith(f"  {name} ")]
        assert len(described) == 1 and len(described[0].split()) > 3, name
    # configargparse's own paragraph about config file syntax is not shown.
    assert "configparser" not in result.stdout and "ConfigParser" not in result.stdout
    assert "status_port" in result.stdout  # the ini key spelling is explained


@pytest.mark.parametrize("args", [
    ["--config", "conf/electric.ini", "gen-token", "alice"],
    ["gen-token", "--config", "conf/electric.ini", "alice"],
    ["gen-token", "alice", "--config", "conf/electric.ini"],
])
def test_settings_before_or_after_the_command(args):
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["alice"]["token"] == "alice"


def test_split_command_skips_option_values():
    assert cli.split_command(["--status-port", "5050", "migrate", "v1"]) == (
        "migrate", ["--status-port", "5050", "v1"])
    assert cli.split_command(["-c", "x.ini", "--print-config"]) == (
        None, ["-c", "x.ini", "--print-config"])


def test_unknown_command_is_one_line():
    result = run("--config", "conf/electric.ini", "frobnicate")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown command 'frobnicate'" in result.stderr


def test_ini_keys_with_underscores_or_dashes(tmp_path):
    ini = tmp_path / "e.ini"
    ini.write_text("[electric]\nstatus_port = 9999\nwebsocket-port = 9998\n")
    s = config.load(["--config", str(ini)], env={})
    assert (s.status_port, s.websocket_port) == (9999, 9998)


def test_unknown_ini_key_is_one_line_naming_key_and_file(tmp_path):
    ini = tmp_path / "e.ini"
    ini.write_text("[electric]\nstatusport = 9999\n")
    result = run("--config", str(ini))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "'statusport'" in result.stderr and str(ini) in result.stderr
    assert "usage" not in result.stderr


def test_missing_config_file_is_one_line(tmp_path):
    missing = tmp_path / "nope.ini"
    result = run("--config", str(missing), "--print-config")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(missing) in result.stderr
    assert "usage" not in result.stderr


def test_unknown_flag_is_one_line():
    result = run("--statusport", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--statusport" in result.stderr


def test_bad_sync_rules_file_is_one_line_naming_file_and_line(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[claims]\nsub = "string"\n\n[tables.items]\nrows = "owner_id IN claims.sub"\n')
    result = run("--sync-rules-file", str(rules), "--print-config")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"SYNC_RULES_FILE: {rules}:5: public.items: rows:" in result.stderr
    assert "IN needs a list claim" in result.stderr and "Traceback" not in result.stderr
