import base64
import io
import json

import pytest

from electric.satellite.auth import JwtAuth
from electric.satellite.tokens import format_tokens, gen_token, main

SECRET_B64 = "BdvUDsCk5QbwkxI0fpEFmM/LNtFvwPZeMfHxvcOoS7s="
CLUSTER = "my-cluster"
JWT_ARGS = [
    "--satellite-auth-mode",
    "jwt",
    "--satellite-auth-signing-key",
    SECRET_B64,
    "--satellite-auth-issuer",
    "iss.example",
    "--global-cluster-id",
    CLUSTER,
]


def verifier():
    return JwtAuth(base64.b64decode(SECRET_B64), CLUSTER, "iss.example")


def test_json_output_validates(capsys):
    out = io.StringIO()
    assert main([*JWT_ARGS, "--ttl", "60", "alice", "bob"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert set(doc) == {"alice", "bob"}
    assert verifier().validate(doc["alice"]["token"]) == "alice"
    assert doc["bob"]["expiry"].endswith("Z")
    assert SECRET_B64 not in out.getvalue() + capsys.readouterr().err


def test_csv_to_file(tmp_path):
    target = tmp_path / "tokens.csv"
    assert main([*JWT_ARGS, "--output", str(target), "u1"]) == 0
    (line,) = target.read_text().splitlines()
    user, token, expiry = line.split(",")
    assert user == "u1" and verifier().validate(token) == "u1" and expiry


def test_no_expiry_and_insecure():
    out = io.StringIO()
    assert main([*JWT_ARGS, "--ttl", "0", "--format", "csv", "x"], out=out) == 0
    assert out.getvalue().endswith(",\n")
    out = io.StringIO()
    assert main(["--satellite-auth-mode", "insecure", "dev-user"], out=out) == 0
    assert json.loads(out.getvalue()) == {"dev-user": {"token": "dev-user", "expiry": None}}


def test_bad_key_is_a_clean_error(capsys):
    assert main(["--satellite-auth-mode", "jwt", "--satellite-auth-signing-key", "nope", "u"]) == 2
    err = capsys.readouterr().err
    assert "SATELLITE_AUTH_SIGNING_KEY" in err and "Traceback" not in err


def test_format_helpers():
    provider = verifier()
    token, expiry = gen_token(provider, "u", ttl=10, now=1000)
    assert expiry.timestamp() == 1010
    assert format_tokens([("u", token, None)], "csv") == f"u,{token},\n"
    with pytest.raises(ValueError):
        gen_token(provider, "")
