import os
import stat

from electric import replication_password


def test_generated_once_kept_0600_and_reused(tmp_path):
    offsets = str(tmp_path / "data" / "offsets.dat")
    first, path = replication_password.resolve("", offsets)
    assert path == str(tmp_path / "data" / "replication_password")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(first) >= 32
    again, _ = replication_password.resolve("", offsets)
    assert again == first
    os.unlink(path)
    assert replication_password.resolve("", offsets)[0] != first  # wiped data: a new one


def test_configured_password_wins_and_writes_nothing(tmp_path):
    offsets = str(tmp_path / "offsets.dat")
    assert replication_password.resolve("chosen", offsets) == ("chosen", None)
    assert not os.path.exists(tmp_path / "replication_password")
