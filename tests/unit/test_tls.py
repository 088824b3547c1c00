import pytest

from electric import tls
from tests.support.tls import make_ca


def test_good_pair_loads_and_bad_files_name_their_setting(tmp_path):
    ca = make_ca(str(tmp_path / "a"))
    other = make_ca(str(tmp_path / "b"))
    assert tls.server_context(ca.cert, ca.key).minimum_version >= tls.ssl.TLSVersion.TLSv1_2
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    cases = [
        ((str(tmp_path / "missing"), ca.key), "TLS_CERT_FILE"),
        ((str(garbage), ca.key), "TLS_CERT_FILE"),
        ((ca.key, ca.key), "TLS_CERT_FILE"),
        ((ca.cert, str(garbage)), "TLS_KEY_FILE"),
        ((ca.cert, ca.cert), "TLS_KEY_FILE"),
        ((ca.cert, other.key), "TLS_KEY_FILE"),
    ]
    for (cert, key), setting in cases:
        with pytest.raises(tls.TlsConfigError) as exc:
            tls.server_context(cert, key)
        assert exc.value.setting == setting, (cert, key, exc.value)


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False),
    ("192.0.2.1", False), ("::", False), ("nonsense", False),
])
def test_is_loopback(address, loopback):
    assert tls.is_loopback(address) is loopback
