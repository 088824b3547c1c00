"""Wheel-installed Postgres servers must run as the postgres account even when the
virtualenv lies where that account cannot go (a checkout under /root, as CI may use)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from electric.devenv import SERVER_USER, copy_where_reachable, reachable_by_others, wheel_bindir


def test_reachability_follows_every_directory_on_the_way(tmp_path):
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "a", 0o755)
    os.chmod(inner, 0o755)
    assert reachable_by_others(str(inner)) == reachable_by_others(str(tmp_path))
    os.chmod(tmp_path / "a", 0o700)
    assert not reachable_by_others(str(inner))


@pytest.mark.skipif(os.geteuid() != 0 or wheel_bindir(16) is None,
                    reason="needs root and the pgserver wheel (the dev extra)")
def test_a_copy_of_the_wheel_runs_as_the_postgres_account(tmp_path):
    import pgserver

    hidden = tmp_path / "private"  # pytest's base directory is 0700, like /root
    hidden.mkdir()
    shutil.copytree(os.path.dirname(pgserver.__file__), hidden / "pgserver", symlinks=True)
    assert not reachable_by_others(str(hidden / "pgserver"))
    shared = tempfile.mkdtemp(prefix="electric-test-wheels-")
    os.chmod(shared, 0o755)
    try:
        copy = copy_where_reachable(str(hidden / "pgserver"), root=shared)
        assert reachable_by_others(copy)
        out = subprocess.run(["su", SERVER_USER, "-s", "/bin/sh", "-c",
                              f"{copy}/pginstall/bin/postgres --version"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "16." in out.stdout, out.stderr
        assert copy_where_reachable(str(hidden / "pgserver"), root=shared) == copy  # once
    finally:
        shutil.rmtree(shared, ignore_errors=True)
