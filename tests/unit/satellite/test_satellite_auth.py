import base64
import time

import jwt
import pytest

from electric.satellite.auth import (
    AuthConfigError,
    AuthError,
    InsecureAuth,
    JwtAuth,
    build_provider,
    decode_secret_key,
    derive_signing_key,
)

SECRET_B64 = "BdvUDsCk5QbwkxI0fpEFmM/LNtFvwPZeMfHxvcOoS7s="
SECRET = base64.b64decode(SECRET_B64)
CLUSTER = "electric-development-cluster-0000"
USER = "a5408365-7bf4-48b1-afe2-cb8171631d7c"
EXAMPLE_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJhbGciOiJIUzI1NiIsImV4cCI6NDEwMjQ0NDgwMCwiZ2xvYmFsX2Ns"
    "dXN0ZXJfaWQiOiJlbGVjdHJpYy1kZXZlbG9wbWVudC1jbHVzdGVyLTAwMDAiLCJpc3MiOiJlbGVjdHJpYy1zcWwuY29tIi"
    "wibm9uY2UiOiIwMDExMjIzMzQ0NTU2Njc3ODg5OWFhYmJjY2RkZWVmZiIsInR5cGUiOiJhY2Nlc3MiLCJ1c2VyX2lkIjoi"
    "YTU0MDgzNjUtN2JmNC00OGIxLWFmZTItY2I4MTcxNjMxZDdjIn0.B7DTn763YNLibPlIWIfdWl1G77OCQNLZyYwUWoxRVtw"
)


@pytest.fixture
def auth():
    return JwtAuth(secret_key=SECRET, global_cluster_id=CLUSTER, issuer="electric-sql.com")


def test_key_derivation_vector():
    assert derive_signing_key(SECRET, CLUSTER).hex() == (
        "b9c6107f096ef93f7fb845386e26fb7c5022da7f15739859faebb3abb28263c7"
    )


def test_reference_example_token(auth):
    assert auth.validate(EXAMPLE_TOKEN) == USER


def test_mint_and_validate(auth):
    token, exp = auth.mint(USER, ttl=60)
    assert exp >= time.time() + 59
    assert auth.validate(token) == USER
    header = jwt.get_unverified_header(token)
    assert header == {"typ": "JWT", "alg": "HS256"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["type"] == "access" and claims["global_cluster_id"] == CLUSTER
    assert claims["iss"] == "electric-sql.com" and len(claims["nonce"]) == 32


def test_expired(auth):
    token, _ = auth.mint(USER, ttl=-24 * 3600)
    with pytest.raises(AuthError) as exc:
        auth.validate(token)
    assert exc.value.expired


def test_no_exp_never_expires(auth):
    token, exp = auth.mint(USER, ttl=None)
    assert exp is None
    assert auth.validate(token) == USER


@pytest.mark.parametrize("token", ["invalid_token", "a.b.c", EXAMPLE_TOKEN[:-2] + "xx"])
def test_garbage(auth, token):
    with pytest.raises(AuthError):
        auth.validate(token)


def test_other_cluster_refused(auth):
    other = JwtAuth(secret_key=SECRET, global_cluster_id="some-other-cluster-id")
    token, _ = other.mint(USER)
    with pytest.raises(AuthError):
        auth.validate(token)


def test_claim_checks(auth):
    def signed(**claims):
        return jwt.encode(claims, auth.signing_key, algorithm="HS256")

    good = {"global_cluster_id": CLUSTER, "type": "access", "user_id": "u"}
    assert auth.validate(signed(**good)) == "u"
    for bad in (
        {**good, "type": "refresh"},
        {**good, "global_cluster_id": "x"},
        {k: v for k, v in good.items() if k != "user_id"},
        {**good, "iss": "someone-else"},
        {**good, "nbf": int(time.time()) + 3600},
    ):
        with pytest.raises(AuthError):
            auth.validate(signed(**bad))


def test_issuer_present_but_none_configured():
    no_iss = JwtAuth(secret_key=SECRET, global_cluster_id=CLUSTER)
    with pytest.raises(AuthError):
        no_iss.validate(EXAMPLE_TOKEN)
    token, _ = no_iss.mint("u")
    assert no_iss.validate(token) == "u"


def test_alg_none_refused(auth):
    token = jwt.encode(
        {"global_cluster_id": CLUSTER, "type": "access", "user_id": "u"}, None, algorithm="none"
    )
    with pytest.raises(AuthError):
        auth.validate(token)


def test_insecure():
    a = InsecureAuth()
    assert a.validate("user-1") == "user-1"
    with pytest.raises(AuthError):
        a.validate("")
    assert a.mint("u") == ("u", None)


def test_key_config_errors_never_echo_secret():
    with pytest.raises(AuthConfigError, match="required"):
        decode_secret_key(None)
    short = base64.b64encode(b"s3cr3t-value").decode()
    with pytest.raises(AuthConfigError) as exc:
        build_provider("jwt", short, None, CLUSTER)
    assert "exactly 32 bytes" in str(exc.value) and short not in str(exc.value)
    with pytest.raises(AuthConfigError, match="base64"):
        decode_secret_key("!!!not base64!!!")
    with pytest.raises(AuthConfigError, match="SATELLITE_AUTH_MODE"):
        build_provider("ldap")
    with pytest.raises(AuthConfigError, match="GLOBAL_CLUSTER_ID"):
        build_provider("jwt", SECRET_B64, None, "")


def test_build_provider():
    assert isinstance(build_provider(None), InsecureAuth)
    p = build_provider("JWT", SECRET_B64, "iss", CLUSTER)
    assert isinstance(p, JwtAuth) and p.issuer == "iss"
    assert SECRET_B64 not in repr(p) and "secret" not in repr(p)
    urlsafe = base64.urlsafe_b64encode(SECRET).decode().rstrip("=")
    assert build_provider("jwt", urlsafe, None, CLUSTER).signing_key == p.signing_key


def test_previous_key_still_accepted_for_rotation_other_keys_refused():
    previous = b"p" * 32
    old = JwtAuth(secret_key=previous, global_cluster_id=CLUSTER)
    token, _ = old.mint(USER)
    rotated = JwtAuth(secret_key=SECRET, global_cluster_id=CLUSTER, previous_secret_key=previous)
    assert rotated.validate(token) == USER
    fresh, _ = rotated.mint(USER)  # new tokens use the current key
    assert JwtAuth(secret_key=SECRET, global_cluster_id=CLUSTER).validate(fresh) == USER
    with pytest.raises(AuthError, match="Signature verification failed"):
        JwtAuth(secret_key=SECRET, global_cluster_id=CLUSTER).validate(token)
    stranger, _ = JwtAuth(secret_key=b"s" * 32, global_cluster_id=CLUSTER).mint(USER)
    with pytest.raises(AuthError):
        rotated.validate(stranger)


def test_clock_skew_leeway_on_exp_and_nbf():
    auth = JwtAuth(secret_key=SECRET, global_cluster_id=CLUSTER, leeway=30)
    now = time.time()
    token, _ = auth.mint(USER, ttl=60, now=now)
    assert auth.validate(token, now=now + 60 + 20) == USER  # 20 s late: within the leeway
    with pytest.raises(AuthError) as exc:
        auth.validate(token, now=now + 60 + 40)
    assert exc.value.expired
    assert auth.validate(token) == USER  # the real-clock path uses the same leeway
    claims = {**auth.claims_for(USER, now=now), "nbf": int(now) + 20}
    early = jwt.encode(claims, auth.signing_key, algorithm="HS256")
    assert auth.validate(early, now=now) == USER
    claims["nbf"] = int(now) + 120
    too_early = jwt.encode(claims, auth.signing_key, algorithm="HS256")
    with pytest.raises(AuthError):
        auth.validate(too_early, now=now)


def test_provider_reads_rotation_and_leeway_settings():
    auth = build_provider("jwt", SECRET_B64, None, CLUSTER,
                          previous_signing_key=base64.b64encode(b"p" * 32).decode(), leeway=5)
    assert auth.leeway == 5 and len(auth._accepted_keys) == 2
    with pytest.raises(AuthConfigError, match="SATELLITE_AUTH_SIGNING_KEY_PREVIOUS"):
        build_provider("jwt", SECRET_B64, None, CLUSTER, previous_signing_key="c2hvcnQ=")


def test_jwt_authenticate_exposes_the_verified_claims(auth):
    token, _exp = auth.mint("alice", claims={"sub": "alice", "teams": ["a", "b"]})
    identity = auth.authenticate(token)
    assert identity.user_id == "alice" and auth.validate(token) == "alice"
    assert identity.claims["sub"] == "alice" and identity.claims["teams"] == ["a", "b"]
    assert identity.claims["global_cluster_id"] == CLUSTER
    # The scheme's own claims cannot be overridden by extra ones.
    token, _exp = auth.mint("alice", claims={"user_id": "mallory", "type": "refresh"})
    assert auth.authenticate(token).user_id == "alice"
    # Claims of a token signed with another key are never read.
    forged = jwt.encode({**auth.authenticate(token).claims, "sub": "bob"}, b"x" * 32,
                        algorithm="HS256")
    with pytest.raises(AuthError):
        auth.authenticate(forged)


def test_insecure_claims_from_the_token():
    a = InsecureAuth()
    assert a.authenticate("user-1").claims == {"user_id": "user-1"}
    token, exp = a.mint("alice", claims={"sub": "alice", "teams": ["a"]})
    assert exp is None and token.count(".") == 2
    identity = a.authenticate(token)
    assert identity.user_id == "alice" and a.validate(token) == "alice"
    assert identity.claims == {"sub": "alice", "teams": ["a"], "user_id": "alice"}
    # A JWT-shaped token without a user id, or one that does not decode, is refused.
    with pytest.raises(AuthError, match="no user_id"):
        a.authenticate(jwt.encode({"sub": "x"}, None, algorithm="none"))
    with pytest.raises(AuthError, match="invalid token"):
        a.authenticate("eyJnope.eyJnope.x")
