"""``electric gen-token``: mint Satellite auth tokens for the configured scheme.

    electric gen-token [--config FILE] [settings…] [--ttl SECONDS] [--format json|csv]
                       [--output FILE] [--claim NAME=VALUE …] USER_ID [USER_ID …]

It reads the same settings as the service (``SATELLITE_AUTH_MODE``,
``SATELLITE_AUTH_SIGNING_KEY``, ``SATELLITE_AUTH_ISSUER``, ``GLOBAL_CLUSTER_ID`` from flags,
environment or the ini file), so the tokens it prints validate against a server started with
the same configuration. In ``jwt`` mode tokens are the target-commit scheme (per-cluster
derived key, ``global_cluster_id``/``type``/``user_id`` claims); in ``insecure`` mode the token
is the user id itself and never expires.

``--claim NAME=VALUE`` (repeatable) adds a claim for sync rules (docs/sync-rules.md). Its
type is the one ``[claims]`` of ``SYNC_RULES_FILE`` declares (``org=7`` → 7 for an integer
claim, ``teams=a,b`` → ``["a", "b"]`` for a list); without a rules file a value with commas is
a list of strings, any other a string. In insecure mode a token with claims is an unsigned JWT
(Electric reads its claims without checking a signature); without claims it stays the user id.

Output: ``json`` (default) is ``{"<user_id>": {"token": …, "expiry": "<iso8601>"|null}}``;
``csv`` (default when ``--output`` is given) is one ``user_id,token,expiry`` line per user.
The signing key is never printed.

Hooks for the CLI: :func:`add_arguments` adds the sub-command's own options to a parser,
:func:`run` takes parsed ``args`` plus the validated ``settings`` Namespace, and :func:`main`
does both (it is what ``electric.cli`` calls for ``gen-token``).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from electric.satellite.auth import AuthConfigError, provider_from_settings

DEFAULT_TTL_SECONDS = 365 * 24 * 3600
EXIT_CONFIG = 2
# Claims the token scheme sets itself: --claim may not replace them.
RESERVED_CLAIMS = frozenset({"user_id", "type", "global_cluster_id", "iss", "exp", "nbf",
                             "iat", "aud", "alg", "nonce"})
_SCALARS = {"string": str, "integer": int, "boolean": bool}


class ClaimError(ValueError):
    """A ``--claim`` argument is malformed; ``str()`` is the one line to print."""


def parse_claims(args: Sequence[str], declared: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """``["sub=alice", "teams=a,b"]`` → ``{"sub": "alice", "teams": ["a", "b"]}``.

    ``declared`` maps claim names to their :class:`~electric.sync_rules.ClaimType` (from the
    rules file) and types the values; undeclared claims are strings, lists with commas."""
    claims: dict[str, Any] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ClaimError(f"--claim {arg!r} must look like NAME=VALUE")
        if name in RESERVED_CLAIMS:
            raise ClaimError(f"--claim {name}: set by the token scheme itself "
                             f"({', '.join(sorted(RESERVED_CLAIMS))})")
        if name in claims:
            raise ClaimError(f"--claim {name} given twice")
        kind = declared.get(name) if declared else None
        claims[name] = _claim_value(name, value, kind.value if kind is not None else None)
    return claims


def _claim_value(name: str, value: str, kind: str | None) -> Any:
    if kind is None:
        return value.split(",") if "," in value else value
    if kind.endswith("[]"):
        parts = value.split(",") if value else []
        return [_scalar(name, part.strip(), kind[:-2]) for part in parts]
    return _scalar(name, value, kind)


def _scalar(name: str, text: str, kind: str) -> Any:
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ClaimError(f"--claim {name}: {text!r} is not an integer (SYNC_RULES_FILE "
                             f"declares {name} as integer)") from None
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise ClaimError(f"--claim {name}: {text!r} is not true or false (SYNC_RULES_FILE "
                             f"declares {name} as boolean)")
        return text.lower() == "true"
    return text


def gen_token(
    provider: Any, user_id: str, ttl: int | None = DEFAULT_TTL_SECONDS, now: float | None = None,
    claims: dict[str, Any] | None = None,
) -> tuple[str, datetime | None]:
    """Mint one token; returns ``(token, expiry as an aware UTC datetime or None)``."""
    if not user_id:
        raise ValueError("user id must not be empty")
    if provider.mode == "jwt":
        token, exp = provider.mint(user_id, ttl=ttl, now=now, claims=claims)
    else:
        token, exp = provider.mint(user_id, claims=claims)
    return token, (datetime.fromtimestamp(exp, UTC) if exp is not None else None)


def format_tokens(rows: Sequence[tuple[str, str, datetime | None]], fmt: str) -> str:
    """``rows`` of ``(user_id, token, expiry)`` → the printed document."""

    def iso(expiry: datetime | None) -> str | None:
        return expiry.isoformat().replace("+00:00", "Z") if expiry else None

    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for user_id, token, expiry in rows:
            writer.writerow([user_id, token, iso(expiry) or ""])
        return buf.getvalue()
    doc = {user_id: {"token": token, "expiry": iso(expiry)} for user_id, token, expiry in rows}
    return json.dumps(doc, indent=2) + "\n"


def add_arguments(parser: Any) -> None:
    parser.add_argument("user_ids", nargs="+", metavar="USER_ID", help="user id(s) to mint for")
    parser.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL_SECONDS,
        help="token lifetime in seconds (0 = no expiry)",
    )
    parser.add_argument(
        "--format",
        choices=("json", "csv"),
        default=None,
        dest="token_format",
        help="output format (default json, or csv with --output)",
    )
    parser.add_argument("--output", default=None, help="write to this file instead of stdout")
    parser.add_argument(
        "--claim", action="append", default=[], dest="claims", metavar="NAME=VALUE",
        help="add a claim for sync rules (repeatable): typed as SYNC_RULES_FILE's [claims] "
             "declares it, else a string, or a list of strings when VALUE has commas "
             "(teams=a,b); in insecure mode the token becomes an unsigned JWT",
    )


def run(args: Any, settings: Any, out: TextIO | None = None) -> int:
    try:
        provider = provider_from_settings(settings)
    except AuthConfigError as exc:
        print(f"electric gen-token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    rules = getattr(settings, "sync_rules", None)
    try:
        claims = parse_claims(getattr(args, "claims", None) or [],
                              rules.claims if rules is not None else None)
    except ClaimError as exc:
        print(f"electric gen-token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    ttl = None if args.ttl == 0 else args.ttl
    rows = []
    for user_id in args.user_ids:
        if not user_id:
            print("electric gen-token: user ids must not be empty", file=sys.stderr)
            return EXIT_CONFIG
        token, expiry = gen_token(provider, user_id, ttl=ttl, claims=claims)
        rows.append((user_id, token, expiry))
    fmt = args.token_format or ("csv" if args.output else "json")
    text = format_tokens(rows, fmt)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {len(rows)} token(s) to {args.output}", file=sys.stderr)
    else:
        (out or sys.stdout).write(text)
    if provider.mode != "jwt":
        what = "unsigned JWTs" if claims else "the user ids"
        print(f"electric gen-token: note: SATELLITE_AUTH_MODE=insecure, tokens are {what}",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    from electric import config

    parser = config.build_parser(prog="electric gen-token")
    parser.description = "Mint Satellite auth tokens for the configured auth scheme."
    add_arguments(parser)
    try:
        settings = config.load(list(sys.argv[1:] if argv is None else argv), parser=parser)
    except config.ConfigError as exc:
        print(f"electric gen-token: invalid setting {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run(settings, settings, out=out)


if __name__ == "__main__":
    sys.exit(main())
