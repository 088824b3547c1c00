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


def test_claims_are_added_and_typed(tmp_path):
    out = io.StringIO()
    assert main([*JWT_ARGS, "--claim", "sub=alice", "--claim", "teams=a,b", "--claim", "x=",
                 "u1"], out=out) == 0
    token = json.loads(out.getvalue())["u1"]["token"]
    claims = verifier().authenticate(token).claims
    assert claims["sub"] == "alice" and claims["teams"] == ["a", "b"] and claims["x"] == ""
    # A rules file types the claims it declares.
    rules = tmp_path / "rules.toml"
    rules.write_text('[claims]\nteams = "string[]"\norg = "integer"\nadmin = "boolean"\n')
    out = io.StringIO()
    assert main([*JWT_ARGS, "--sync-rules-file", str(rules), "--claim", "teams=solo",
                 "--claim", "org=7", "--claim", "admin=true", "u1"], out=out) == 0
    claims = verifier().authenticate(json.loads(out.getvalue())["u1"]["token"]).claims
    assert claims["teams"] == ["solo"] and claims["org"] == 7 and claims["admin"] is True


def test_insecure_tokens_with_claims_are_unsigned_jwts():
    from electric.satellite.auth import InsecureAuth

    out = io.StringIO()
    assert main(["--satellite-auth-mode", "insecure", "--claim", "sub=bob", "bob"], out=out) == 0
    token = json.loads(out.getvalue())["bob"]["token"]
    identity = InsecureAuth().authenticate(token)
    assert identity.user_id == "bob" and identity.claims["sub"] == "bob"


@pytest.mark.parametrize("args, words", [
    (["--claim", "nonsense"], "must look like NAME=VALUE"),
    (["--claim", "=x"], "must look like NAME=VALUE"),
    (["--claim", "user_id=mallory"], "set by the token scheme itself"),
    (["--claim", "exp=1"], "set by the token scheme itself"),
    (["--claim", "a=1", "--claim", "a=2"], "given twice"),
])
def test_bad_claims_are_one_line_and_exit_2(capsys, args, words):
    assert main([*JWT_ARGS, *args, "u1"]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_claims_of_the_wrong_declared_type_are_refused(capsys, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[claims]\norg = "integer"\nadmin = "boolean"\n')
    assert main([*JWT_ARGS, "--sync-rules-file", str(rules), "--claim", "org=seven", "u"]) == 2
    assert "'seven' is not an integer" in capsys.readouterr().err
    assert main([*JWT_ARGS, "--sync-rules-file", str(rules), "--claim", "admin=yes", "u"]) == 2
    assert "'yes' is not true or false" in capsys.readouterr().err


def test_help_documents_claim(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--claim NAME=VALUE" in capsys.readouterr().out
