"""``electric migrate [settings] VSN``: apply a migration to every connector via the API.

It talks to the running Electric on ``STATUS_PORT`` (same settings as the service, so the
same ``--config`` works) and prints one line per connector. Exit code 0 when every connector
has the migration (newly applied or already there with the same hash), 1 otherwise.

It sends ``Authorization: Bearer <STATUS_API_TOKEN>`` when the token is set (without it the
API only answers loopback clients), and speaks https when TLS_CERT_FILE is set, trusting the
system CAs and that very certificate (pinned, so a self-signed one works; the host name is
then not checked, since ``--host`` is usually 127.0.0.1).
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request

from electric import config


def client_tls_context(cert_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=cert_file)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # trust the leaf itself
    context.check_hostname = False
    return context


def put_migration(base_url: str, origin: str, vsn: str, timeout: float = 120, *,
                  token: str = "", context: ssl.SSLContext | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{base_url}/api/migrations/{origin}", method="PUT",
        data=json.dumps({"vsn": vsn}).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"error": "http", "message": raw.decode(errors="replace")}


def _local_address(listen_address: str) -> str:
    """Where a local client reaches the status port: the bound address, loopback for a
    wildcard (so that, without STATUS_API_TOKEN, the request comes from loopback)."""
    if listen_address in ("0.0.0.0", ""):
        return "127.0.0.1"
    if listen_address == "::":
        return "::1"
    return listen_address


def main(argv: list[str]) -> int:
    parser = config.build_parser(prog="electric migrate")
    parser.add_argument("vsn", help="migration version: MIGRATIONS_DIR/<vsn>/postgres.sql")
    parser.add_argument("--host", default=None,
                        help="where Electric's STATUS_PORT is (default: LISTEN_ADDRESS, or "
                             "127.0.0.1 when that is a wildcard)")
    try:
        settings = config.load(argv, parser=parser)
    except config.ConfigError as exc:
        print(f"electric: invalid setting {exc}", file=sys.stderr)
        return 2
    if not settings.connectors:
        print("electric migrate: no CONNECTORS configured", file=sys.stderr)
        return 2
    context = client_tls_context(settings.tls_cert_file) if settings.tls_cert_file else None
    scheme = "https" if context is not None else "http"
    host = settings.host or _local_address(settings.listen_address)
    if ":" in host:
        host = f"[{host}]"
    base = f"{scheme}://{host}:{settings.status_port}"
    failed = 0
    for connector in settings.connectors:
        try:
            status, body = put_migration(base, connector.name, settings.vsn,
                                         token=settings.status_api_token, context=context)
        except OSError as exc:
            print(f"{connector.name}: cannot reach Electric at {base}: {exc}")
            failed += 1
            continue
        if status == 200:
            print(f"{connector.name}: applied {body['vsn']} (md5 {body['hash']})")
        elif body.get("error") == "already_migrated":
            print(f"{connector.name}: already at {settings.vsn}")
        else:
            print(f"{connector.name}: failed ({status} {body.get('error')}): {body.get('message')}")
            failed += 1
    return 1 if failed else 0
