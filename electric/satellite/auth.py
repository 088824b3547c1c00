"""Satellite client authentication (docs/protocols.md §1.6).

Two providers, chosen by ``SATELLITE_AUTH_MODE``:

* ``insecure`` — any non-empty token is accepted and is itself the user id (dev/test);
* ``jwt`` — HS256 tokens whose key is derived per cluster from a 32-byte secret:
  ``HMAC-SHA256(HMAC-SHA256(secret, "EDBv01"), global_cluster_id)``. The token must carry
  ``global_cluster_id`` equal to ours, ``type == "access"`` and a ``user_id``; registered
  claims (``exp``, ``nbf``, ``iat``, ``aud``) are checked only when present, and ``iss`` must
  equal the configured issuer when the token has one.

Both providers also offer ``authenticate(token) -> Identity``: the user id plus the token's
claims, which sync rules match rows against (docs/sync-rules.md). In JWT mode these are the
verified claims. In insecure mode a plain token's claims are just ``{"user_id": token}``; a
token shaped like a JWT (``electric gen-token --claim …`` in insecure mode mints unsigned
ones) is read without any signature check, and its ``user_id`` claim is the user id.

Unlike the reference, the secret, issuer and cluster id all come from configuration, and the
secret is never logged or echoed (not even in error messages).

Key rotation: ``SATELLITE_AUTH_SIGNING_KEY_PREVIOUS`` names a second secret whose tokens are
still accepted (new tokens are always signed with the current key). To rotate: move the
current key to ``…_PREVIOUS``, set a new current key, restart; drop the previous one once
every token signed with it has expired. Clock skew: ``exp``, ``nbf`` and ``iat`` are checked
with ``SATELLITE_AUTH_LEEWAY`` seconds of tolerance (default 30), so a client or server clock a
little off does not refuse fresh tokens or accept long-expired ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

KEY_DERIVATION_SALT = b"EDBv01"
SECRET_KEY_BYTES = 32
DEFAULT_TTL_SECONDS = 900
DEFAULT_LEEWAY_SECONDS = 30


class AuthError(Exception):
    """A token was refused. ``reason`` is safe to log; it never contains the token."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


class AuthConfigError(ValueError):
    """Bad auth settings: start-up must stop with this one-line message."""


@dataclass(frozen=True)
class Identity:
    """Who a token stands for: the user id and every claim of the token."""

    user_id: str
    claims: dict[str, Any]


class AuthProvider(Protocol):
    mode: str

    def validate(self, token: str) -> str:
        """Return the user id the token stands for, or raise :class:`AuthError`."""
        ...

    def authenticate(self, token: str) -> Identity:
        """The user id and claims of the token, or raise :class:`AuthError`."""
        ...


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


@dataclass(frozen=True)
class InsecureAuth:
    mode: str = "insecure"

    def validate(self, token: str) -> str:
        return self.authenticate(token).user_id

    def authenticate(self, token: str) -> Identity:
        if not token:
            raise AuthError("empty token")
        if not _looks_like_jwt(token):
            return Identity(token, {"user_id": token})
        try:
            claims = jwt.decode(token, options={"verify_signature": False,
                                                "verify_exp": False})
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({str(exc) or 'rejected'})") from None
        user_id = claims.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise AuthError("invalid token: no user_id claim")
        return Identity(user_id, claims)

    def mint(self, user_id: str, ttl: int | None = None,
             claims: dict[str, Any] | None = None) -> tuple[str, int | None]:
        """In insecure mode the token *is* the user id and never expires; with ``claims`` it
        is an unsigned JWT carrying them (read back by :meth:`authenticate`)."""
        if not claims:
            return user_id, None
        token = jwt.encode({**claims, "user_id": user_id}, None, algorithm="none")
        return token, None


def derive_signing_key(secret_key: bytes, global_cluster_id: str) -> bytes:
    if len(secret_key) != SECRET_KEY_BYTES:
        raise AuthConfigError(
            f"SATELLITE_AUTH_SIGNING_KEY must be exactly {SECRET_KEY_BYTES} bytes "
            f"(got {len(secret_key)})"
        )
    k1 = hmac.new(secret_key, KEY_DERIVATION_SALT, hashlib.sha256).digest()
    return hmac.new(k1, global_cluster_id.encode(), hashlib.sha256).digest()


def decode_secret_key(value: str | bytes | None,
                      setting: str = "SATELLITE_AUTH_SIGNING_KEY") -> bytes:
    """Configured secret → 32 raw bytes. Accepts standard or URL-safe base64.

    The message on failure names the setting but never repeats its value.
    """
    if value is None or value == "" or value == b"":
        raise AuthConfigError(
            f"{setting} is required when SATELLITE_AUTH_MODE=jwt "
            f"(base64 of {SECRET_KEY_BYTES} random bytes)"
        )
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = value.strip()
    raw: bytes | None = None
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decoder(text + "=" * (-len(text) % 4))
            break
        except (binascii.Error, ValueError):
            continue
    if raw is None:
        raise AuthConfigError(f"{setting} is not valid base64")
    if len(raw) != SECRET_KEY_BYTES:
        raise AuthConfigError(
            f"{setting} must decode to exactly {SECRET_KEY_BYTES} bytes "
            f"(got {len(raw)})"
        )
    return raw


@dataclass(frozen=True)
class JwtAuth:
    """The target-commit JWT scheme (docs/protocols.md §1.6)."""

    secret_key: bytes = field(repr=False)
    global_cluster_id: str
    issuer: str | None = None
    mode: str = "jwt"
    previous_secret_key: bytes | None = field(default=None, repr=False)
    leeway: int = DEFAULT_LEEWAY_SECONDS
    _signing_key: bytes = field(init=False, repr=False, compare=False)
    _accepted_keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.global_cluster_id:
            raise AuthConfigError("GLOBAL_CLUSTER_ID must not be empty in jwt auth mode")
        key = derive_signing_key(self.secret_key, self.global_cluster_id)
        object.__setattr__(self, "_signing_key", key)
        accepted = [key]
        if self.previous_secret_key:
            accepted.append(derive_signing_key(self.previous_secret_key, self.global_cluster_id))
        object.__setattr__(self, "_accepted_keys", tuple(accepted))

    @property
    def signing_key(self) -> bytes:
        return self._signing_key

    def validate(self, token: str, now: float | None = None) -> str:
        return self.authenticate(token, now).user_id

    def authenticate(self, token: str, now: float | None = None) -> Identity:
        """The verified claims of ``token`` and its user id, or :class:`AuthError`."""
        if not token:
            raise AuthError("empty token")
        claims = None
        for key in self._accepted_keys:
            try:
                claims = self._decode(token, key, now)
                break
            except jwt.InvalidSignatureError:
                continue  # maybe signed with the previous key (rotation)
        if claims is None:
            raise AuthError("invalid token (Signature verification failed)")
        if "iss" in claims and claims["iss"] != self.issuer:
            raise AuthError("invalid token: unexpected issuer")
        if claims.get("global_cluster_id") != self.global_cluster_id:
            raise AuthError("invalid access token: wrong global_cluster_id")
        if claims.get("type") != "access":
            raise AuthError("invalid access token: type is not 'access'")
        user_id = claims.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise AuthError("invalid access token: no user_id")
        return Identity(user_id, claims)

    def _decode(self, token: str, key: bytes, now: float | None) -> dict[str, Any]:
        """Claims of ``token`` if signed with ``key`` and in date (with the leeway).

        Raises ``jwt.InvalidSignatureError`` for another key, :class:`AuthError` otherwise."""
        options: dict[str, Any] = {"verify_iss": False, "require": []}
        leeway = self.leeway
        try:
            if now is None:
                claims = jwt.decode(
                    token, key, algorithms=["HS256"], options=options, leeway=leeway
                )
            else:
                # PyJWT reads the clock itself; for a caller-supplied time, verify the
                # signature with PyJWT and the time claims here.
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    options={
                        **options,
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
                exp = claims.get("exp")
                if exp is not None and (not isinstance(exp, int | float)
                                        or exp <= now - leeway):
                    raise jwt.ExpiredSignatureError("Signature has expired")
                nbf = claims.get("nbf")
                if nbf is not None and (not isinstance(nbf, int | float)
                                        or nbf > now + leeway):
                    raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
        except jwt.InvalidSignatureError:
            raise
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", expired=True) from None
        except jwt.InvalidTokenError as exc:
            # PyJWT's own words ("Signature verification failed", "Not enough segments"):
            # never the token itself, and no exception class names in the log.
            raise AuthError(f"invalid token ({str(exc) or 'rejected'})") from None
        return claims

    def claims_for(
        self,
        user_id: str,
        ttl: int | None = DEFAULT_TTL_SECONDS,
        now: float | None = None,
        nonce: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = time.time() if now is None else now
        claims: dict[str, Any] = {
            **(extra or {}),  # first: the scheme's own claims below always win
            "alg": "HS256",  # the reference's library copies the header into the claims
            "global_cluster_id": self.global_cluster_id,
            "nonce": nonce if nonce is not None else secrets.token_hex(16),
            "type": "access",
            "user_id": user_id,
        }
        if ttl is not None:
            claims["exp"] = int(now) + int(ttl)
        if self.issuer:
            claims["iss"] = self.issuer
        return claims

    def mint(
        self,
        user_id: str,
        ttl: int | None = DEFAULT_TTL_SECONDS,
        now: float | None = None,
        nonce: str | None = None,
        claims: dict[str, Any] | None = None,
    ) -> tuple[str, int | None]:
        """Sign an access token for ``user_id`` with ``claims`` besides the scheme's own;
        returns ``(token, exp or None)``."""
        claims = self.claims_for(user_id, ttl=ttl, now=now, nonce=nonce, extra=claims)
        token = jwt.encode(claims, self._signing_key, algorithm="HS256", headers={"typ": "JWT"})
        return token, claims.get("exp")


def build_provider(
    mode: str | None,
    signing_key: str | bytes | None = None,
    issuer: str | None = None,
    global_cluster_id: str = "",
    previous_signing_key: str | bytes | None = None,
    leeway: int = DEFAULT_LEEWAY_SECONDS,
) -> InsecureAuth | JwtAuth:
    """Make the configured provider; raises :class:`AuthConfigError` on bad settings."""
    mode = (mode or "insecure").strip().lower()
    if mode == "insecure":
        return InsecureAuth()
    if mode == "jwt":
        previous = (decode_secret_key(previous_signing_key,
                                      "SATELLITE_AUTH_SIGNING_KEY_PREVIOUS")
                    if previous_signing_key else None)
        return JwtAuth(
            secret_key=decode_secret_key(signing_key),
            global_cluster_id=global_cluster_id,
            issuer=issuer or None,
            previous_secret_key=previous,
            leeway=int(leeway),
        )
    raise AuthConfigError(f"SATELLITE_AUTH_MODE must be 'insecure' or 'jwt' (got {mode!r})")


def provider_from_settings(settings: Any) -> InsecureAuth | JwtAuth:
    """Convenience for electric/app.py: read the ``satellite_auth_*`` settings."""
    return build_provider(
        getattr(settings, "satellite_auth_mode", "insecure"),
        getattr(settings, "satellite_auth_signing_key", None),
        getattr(settings, "satellite_auth_issuer", None),
        getattr(settings, "global_cluster_id", "") or "",
        getattr(settings, "satellite_auth_signing_key_previous", None) or None,
        getattr(settings, "satellite_auth_leeway", DEFAULT_LEEWAY_SECONDS),
    )
