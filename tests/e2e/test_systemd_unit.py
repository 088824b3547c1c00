"""conf/electric.service passes `systemd-analyze verify`, installed over a clean checkout."""

import os
import shutil
import subprocess

import pytest

from tests.support.checkout import clean_checkout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (.ci/run installs the systemd package)")
def test_systemd_unit_verifies(tmp_path):
    root = clean_checkout(str(tmp_path / "electric"))
    with open(os.path.join(root, "conf", "electric.service")) as fh:
        unit = fh.read()
    assert "ExecStart=/opt/electric/bin/electric --config /etc/electric/electric.ini" in unit
    # The unit as installed on a host with the checkout in /opt/electric; here, a clean copy.
    unit = unit.replace("/etc/electric/electric.ini", os.path.join(root, "conf", "electric.ini"))
    unit = unit.replace("/opt/electric", root)
    path = tmp_path / "electric.service"
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    # Unknown keys or sections are only warnings: any output counts as a failure.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr
