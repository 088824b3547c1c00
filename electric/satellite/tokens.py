"""``electric gen-token``: mint Satellite auth tokens for the configured scheme.

    electric gen-token [--config FILE] [settings…] [--ttl SECONDS] [--format json|csv]
                       [--output FILE] USER_ID [USER_ID …]

It reads the same settings as the service (``SATELLITE_AUTH_MODE``,
``SATELLITE_AUTH_SIGNING_KEY``, ``SATELLITE_AUTH_ISSUER``, ``GLOBAL_CLUSTER_ID`` from flags,
environment or the ini file), so the tokens it prints validate against a server started with
the same configuration. In ``jwt`` mode tokens are the target-commit scheme (per-cluster
derived key, ``global_cluster_id``/``type``/``user_id`` claims); in ``insecure`` mode the token
is the user id itself and never expires.

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


def gen_token(
    provider: Any, user_id: str, ttl: int | None = DEFAULT_TTL_SECONDS, now: float | None = None
) -> tuple[str, datetime | None]:
    """Mint one token; returns ``(token, expiry as an aware UTC datetime or None)``."""
    if not user_id:
        raise ValueError("user id must not be empty")
    if provider.mode == "jwt":
        token, exp = provider.mint(user_id, ttl=ttl, now=now)
    else:
        token, exp = provider.mint(user_id)
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


def run(args: Any, settings: Any, out: TextIO | None = None) -> int:
    try:
        provider = provider_from_settings(settings)
    except AuthConfigError as exc:
        print(f"electric gen-token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    ttl = None if args.ttl == 0 else args.ttl
    rows = []
    for user_id in args.user_ids:
        if not user_id:
            print("electric gen-token: user ids must not be empty", file=sys.stderr)
            return EXIT_CONFIG
        token, expiry = gen_token(provider, user_id, ttl=ttl)
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
        print(
            "electric gen-token: note: SATELLITE_AUTH_MODE=insecure, tokens are the user ids",
            file=sys.stderr,
        )
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
