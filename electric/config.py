"""Settings: ini file, environment variables and flags (flag > env > file > default).

Every setting has the environment name the reference used. Validation happens here, once, so
that a bad value stops start-up with exit code 2 and one line naming the setting; the rest of
the program can trust the Namespace it receives.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import configargparse
from psycopg2.extensions import make_dsn

from electric.cli_parser import (
    ConfigFileProblem,
    ElectricArgParser,
    HelpFormatter,
    check_config_file,
)
from electric.limits import DEFAULT

# Connection parameters a CONNECTORS URL may carry besides ``timeout``: what libpq users set
# for managed Postgres (TLS, session options, keepalives). They are handed to libpq as they
# are; anything else is refused by name so a typo never goes unnoticed.
LIBPQ_URL_PARAMS = frozenset({
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir",
    "sslsni", "ssl_min_protocol_version", "ssl_max_protocol_version", "channel_binding",
    "gssencmode", "krbsrvname", "options", "application_name", "connect_timeout", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "target_session_attrs", "hostaddr", "passfile",
})
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SECRET_URL_PARAMS = frozenset({"sslpassword"})
SECRET_SETTINGS = ("satellite_auth_signing_key", "satellite_auth_signing_key_previous",
                   "postgres_replication_password", "status_api_token")
REDACTED = "********"
CONNECTOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ConfigError(Exception):
    """A setting has a bad value; ``str()`` is the one line shown to the operator."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True)
class Connector:
    """One Postgres that Electric replicates with (an entry of ``CONNECTORS``)."""

    name: str
    host: str
    port: int
    user: str
    password: str = field(repr=False, default="")
    database: str = "postgres"
    timeout_ms: int = DEFAULT.postgres.connector_timeout_ms
    # libpq parameters from the URL (sslmode, options, ...), in URL order.
    params: tuple[tuple[str, str], ...] = ()

    def dsn(self, **extra: str | int) -> str:
        """libpq conninfo for this connector; ``extra`` adds keywords (e.g. replication)."""
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.database,
            "connect_timeout": max(1, self.timeout_ms // 1000),
        }
        if self.password:
            params["password"] = self.password
        params.update(self.params)  # explicit libpq parameters win over the defaults above
        params.update(extra)
        return make_dsn(**{k: str(v) for k, v in params.items()})

    def redacted_url(self) -> str:
        secret = f":{REDACTED}" if self.password else ""
        extra = "".join(f"&{k}={REDACTED if k in SECRET_URL_PARAMS else v}"
                        for k, v in self.params)
        return (
            f"{self.name}=postgresql://{self.user}{secret}@{self.host}:{self.port}"
            f"/{self.database}?timeout={self.timeout_ms}{extra}"
        )


def parse_connectors(text: str) -> list[Connector]:
    """Parse ``name=postgresql://user:pass@host:port/db[?timeout=ms];…``."""
    connectors: list[Connector] = []
    seen: set[str] = set()
    for entry in (part.strip() for part in (text or "").split(";")):
        if not entry:
            continue
        name, sep, url = entry.partition("=")
        name = name.strip()
        if not sep or not CONNECTOR_NAME.match(name):
            raise ConfigError(
                "CONNECTORS",
                f"entry {_safe_entry(entry)!r} must look like name=postgresql://user:pass@host:port/db"
                " (name: letters, digits, underscore)",
            )
        if name in seen:
            raise ConfigError("CONNECTORS", f"duplicate connector name {name!r}")
        seen.add(name)
        connectors.append(_parse_connector_url(name, url.strip()))
    return connectors


def _safe_entry(entry: str) -> str:
    # Never echo a password back, even inside an error message.
    return re.sub(r"(://[^:/@]*:)[^@]*@", rf"\1{REDACTED}@", entry)


def _parse_connector_url(name: str, url: str) -> Connector:
    where = f"connector {name!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError("CONNECTORS", f"{where}: malformed URL ({exc})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError("CONNECTORS", f"{where}: URL must start with postgresql://")
    if not parts.hostname:
        raise ConfigError("CONNECTORS", f"{where}: URL has no host")
    if not parts.username:
        raise ConfigError("CONNECTORS", f"{where}: URL has no user")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigError("CONNECTORS", f"{where}: URL must name one database (…/dbname)")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"timeout"} - LIBPQ_URL_PARAMS)
    if unknown:
        raise ConfigError("CONNECTORS", f"{where}: unknown URL parameter(s) {', '.join(unknown)}"
                          f" (accepted: timeout and the libpq parameters"
                          f" {', '.join(sorted(LIBPQ_URL_PARAMS))})")
    params = tuple((k, query[k][-1]) for k in query if k in LIBPQ_URL_PARAMS)
    sslmode = dict(params).get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        raise ConfigError("CONNECTORS", f"{where}: sslmode must be one of {', '.join(SSLMODES)}")
    timeout_ms = DEFAULT.postgres.connector_timeout_ms
    if "timeout" in query:
        raw = query["timeout"][-1]
        if not raw.isdigit() or int(raw) <= 0:
            raise ConfigError("CONNECTORS", f"{where}: timeout must be a positive number of ms")
        timeout_ms = int(raw)
    return Connector(
        name=name,
        host=parts.hostname,
        port=port or 5432,
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        database=database,
        timeout_ms=timeout_ms,
        params=params,
    )


# -- the option table ------------------------------------------------------------------

# (flag, env, default, type, help). ``type`` is one of "str", "port", "ms", "int", or a tuple
# of allowed choices. Kept as data so --help, the README table and conf/electric.ini agree.
OPTIONS: list[tuple[str, str, object, object, str]] = [
    ("--vaxine-host", "VAXINE_HOST", "embedded", "str",
     "Vaxine host; unset or 'embedded' starts the embedded Vaxine-compatible store"),
    ("--vaxine-api-port", "VAXINE_API_PORT", 8087, "port", "Vaxine Antidote protobuf API port"),
    ("--vaxine-replication-port", "VAXINE_REPLICATION_PORT", 8088, "port",
     "Vaxine WAL replication stream port"),
    ("--vaxine-connection-timeout", "VAXINE_CONNECTION_TIMEOUT", 5000, "ms",
     "Vaxine connect timeout in milliseconds"),
    ("--vaxine-pool-size", "VAXINE_POOL_SIZE", 10, "int", "connections in the shared Vaxine API pool"),
    ("--vaxine-data-dir", "VAXINE_DATA_DIR", "./vaxine_data", "str",
     "data directory of the embedded store (store.db: rows and log, SQLite)"),
    ("--store-retain-changes", "STORE_RETAIN_CHANGES", DEFAULT.store.retain_changes, "int",
     "changes the embedded store's log keeps; older readers get a snapshot of the rows"),
    ("--electric-host", "ELECTRIC_HOST", "localhost", "str",
     "host every Postgres uses to reach Electric's replication port (written into subscriptions)"),
    ("--connectors", "CONNECTORS", "", "str",
     "';'-separated name=postgresql://user:pass@host:port/db[?timeout=ms&sslmode=...]; libpq "
     "parameters (sslmode, sslrootcert, sslcert, sslkey, options, application_name, "
     "connect_timeout, keepalives...) are passed through"),
    ("--postgres-replication-port", "POSTGRES_REPLICATION_PORT", 5433, "port",
     "port of Electric's Postgres replication publisher"),
    ("--postgres-replication-password", "POSTGRES_REPLICATION_PASSWORD", "", "str",
     "password subscribers give (SCRAM-SHA-256) on the replication port; unset: a random one "
     "is generated on first start and kept in 'replication_password' beside "
     "OFFSET_STORAGE_FILE (mode 0600)"),
    ("--postgres-publication", "POSTGRES_PUBLICATION", "all_tables", "str",
     "publication name on every connected Postgres"),
    ("--postgres-slot", "POSTGRES_SLOT", "all_changes", "str",
     "replication slot name on every connected Postgres"),
    ("--status-port", "STATUS_PORT", 5050, "port", "HTTP port: status, migrations API, metrics"),
    ("--websocket-port", "WEBSOCKET_PORT", 5133, "port", "Satellite websocket port (path /ws)"),
    ("--listen-address", "LISTEN_ADDRESS", "0.0.0.0", "str",
     "address the replication, websocket and status listeners bind (e.g. 127.0.0.1, ::)"),
    ("--max-connections", "MAX_CONNECTIONS", 10000, "int",
     "open connections per listener; beyond it new ones are refused (Postgres FATAL 53300, "
     "HTTP/websocket 503)"),
    ("--tls-cert-file", "TLS_CERT_FILE", "", "str",
     "PEM certificate (chain) for TLS on the replication port, wss:// and https:// "
     "(with TLS_KEY_FILE)"),
    ("--tls-key-file", "TLS_KEY_FILE", "", "str", "PEM private key of TLS_CERT_FILE"),
    ("--status-api-token", "STATUS_API_TOKEN", "", "str",
     "bearer token required by mutating admin endpoints (PUT /api/migrations/...); unset: "
     "they only answer loopback peers"),
    ("--offset-storage-file", "OFFSET_STORAGE_FILE", "./offset_storage_data.dat", "str",
     "append-only file of replication offsets"),
    ("--migrations-dir", "MIGRATIONS_DIR", "./migrations", "str",
     "folder of migrations: <dir>/<vsn>/postgres.sql"),
    ("--migrations-file-name-suffix", "MIGRATIONS_FILE_NAME_SUFFIX", "/postgres.sql", "str",
     "appended to MIGRATIONS_DIR/<vsn> to find a migration's SQL"),
    ("--global-cluster-id", "GLOBAL_CLUSTER_ID", "electric-development-cluster-0000", "str",
     "cluster id checked in Satellite JWTs"),
    ("--satellite-auth-mode", "SATELLITE_AUTH_MODE", "insecure", ("insecure", "jwt"),
     "Satellite client auth: insecure (token = user id) or jwt"),
    ("--satellite-auth-signing-key", "SATELLITE_AUTH_SIGNING_KEY", "", "str",
     "base64 of 32 secret bytes for Satellite JWTs (required in jwt mode)"),
    ("--satellite-auth-signing-key-previous", "SATELLITE_AUTH_SIGNING_KEY_PREVIOUS", "", "str",
     "key rotation: a second key (base64 of 32 bytes) whose tokens are still accepted"),
    ("--satellite-auth-issuer", "SATELLITE_AUTH_ISSUER", "electric-sql", "str",
     "expected 'iss' of Satellite JWTs"),
    ("--satellite-auth-leeway", "SATELLITE_AUTH_LEEWAY", 30, "int",
     "clock skew tolerated on Satellite JWT exp/nbf/iat, seconds"),
    ("--sync-rules-file", "SYNC_RULES_FILE", "", "str",
     "TOML file of sync rules: which tables and rows each Satellite client sees and may "
     "write, by its token claims (docs/sync-rules.md); unset: every client sees everything"),
    ("--log-level", "LOG_LEVEL", "info", ("trace", "debug", "info", "warning", "error"),
     "minimum log level"),
    ("--log-file", "LOG_FILE", "", "str", "also log to this file (rotated; for tailing)"),
    ("--log-rotation", "LOG_ROTATION", "50 MB", "str", "rotate the log file at this size/interval"),
    ("--log-retention", "LOG_RETENTION", "10 files", "str", "how many rotated log files to keep"),
    ("--log-format", "LOG_FORMAT", "text", ("text", "json"), "console/file line format"),
]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_parser(prog: str = "electric") -> ElectricArgParser:
    parser = ElectricArgParser(
        prog=prog,
        description="Electric: active-active replication between Postgres and Satellite clients.",
        config_file_parser_class=configargparse.ConfigparserConfigFileParser,
        formatter_class=HelpFormatter,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="ini file with settings (section [electric]; keys are the flag "
                                "names without the leading dashes, e.g. status-port or status_port)",
        ignore_unknown_config_file_keys=False,
        add_config_file_help=False,
        add_env_var_help=False,
    )
    for flag, env, default, _kind, help_text in OPTIONS:
        parser.add_argument(
            flag, env_var=env, default=default, help=help_text, metavar=env
        )
    parser.add_argument(
        "--print-config", action="store_true",
        help="print the effective settings (secrets redacted) and exit",
    )
    return parser


def validate(ns: configargparse.Namespace) -> configargparse.Namespace:
    """Turn raw strings into typed values; raise ConfigError naming the setting."""
    for flag, env, _default, kind, _help in OPTIONS:
        dest = _dest(flag)
        setattr(ns, dest, _convert(env, getattr(ns, dest), kind))
    if ns.vaxine_host in ("", "embedded"):
        ns.vaxine_host = None
    ns.connectors = parse_connectors(ns.connectors)
    ports = {
        "VAXINE_API_PORT": ns.vaxine_api_port,
        "VAXINE_REPLICATION_PORT": ns.vaxine_replication_port,
        "POSTGRES_REPLICATION_PORT": ns.postgres_replication_port,
        "STATUS_PORT": ns.status_port,
        "WEBSOCKET_PORT": ns.websocket_port,
    }
    if ns.vaxine_host is not None:
        del ports["VAXINE_API_PORT"], ports["VAXINE_REPLICATION_PORT"]
    by_port: dict[int, str] = {}
    for env, port in ports.items():
        if port in by_port:
            raise ConfigError(env, f"port {port} is also used by {by_port[port]}")
        by_port[port] = env
    if ns.vaxine_pool_size < 1:
        raise ConfigError("VAXINE_POOL_SIZE", "must be at least 1")
    if ns.store_retain_changes < 1000:
        raise ConfigError("STORE_RETAIN_CHANGES", "must be at least 1000")
    if ns.satellite_auth_mode == "jwt":
        _check_signing_key(ns.satellite_auth_signing_key)
        if ns.satellite_auth_signing_key_previous:
            _check_signing_key(ns.satellite_auth_signing_key_previous,
                               "SATELLITE_AUTH_SIGNING_KEY_PREVIOUS")
    if ns.max_connections < 1:
        raise ConfigError("MAX_CONNECTIONS", "must be at least 1")
    ns.sync_rules = _load_sync_rules(ns.sync_rules_file)
    _check_listen_address(ns.listen_address)
    _check_tls(ns.tls_cert_file, ns.tls_key_file)
    if not ns.offset_storage_file:
        raise ConfigError("OFFSET_STORAGE_FILE", "must not be empty")
    if not ns.migrations_file_name_suffix:
        raise ConfigError("MIGRATIONS_FILE_NAME_SUFFIX", "must not be empty")
    for env, value in (("POSTGRES_PUBLICATION", ns.postgres_publication),
                       ("POSTGRES_SLOT", ns.postgres_slot)):
        if not CONNECTOR_NAME.match(value):
            raise ConfigError(env, f"{value!r} is not a valid Postgres identifier")
    return ns


def _check_signing_key(key: str, setting: str = "SATELLITE_AUTH_SIGNING_KEY") -> None:
    if not key:
        raise ConfigError(setting, "required when SATELLITE_AUTH_MODE=jwt")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(setting, "must be valid base64") from None
    if len(raw) != 32:
        # The Satellite JWT scheme derives its HS256 key from exactly 32 secret bytes.
        raise ConfigError(
            setting, f"decodes to {len(raw)} bytes; the Satellite JWT scheme needs exactly 32")


def _load_sync_rules(path: str):
    """The compiled rules file, or None when unset. Checked against the tables later, once
    the connectors have reported them (electric.sync_rules.check)."""
    if not path:
        return None
    from electric import sync_rules

    try:
        return sync_rules.load(path)
    except sync_rules.RulesError as exc:
        raise ConfigError("SYNC_RULES_FILE", str(exc)) from None


def _check_listen_address(address: str) -> None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError("LISTEN_ADDRESS", f"{address!r} is not an IPv4 or IPv6 address") \
            from None


def _check_tls(cert_file: str, key_file: str) -> None:
    from electric import tls

    if bool(cert_file) != bool(key_file):
        missing = "TLS_KEY_FILE" if cert_file else "TLS_CERT_FILE"
        raise ConfigError(missing, "TLS_CERT_FILE and TLS_KEY_FILE must be set together")
    if cert_file:
        try:
            tls.server_context(cert_file, key_file)
        except tls.TlsConfigError as exc:
            raise ConfigError(exc.setting, exc.problem) from None


def _convert(env: str, value: object, kind: object) -> object:
    text = str(value).strip() if value is not None else ""
    if isinstance(kind, tuple):
        if text.lower() not in kind:
            raise ConfigError(env, f"{text!r} is not one of {', '.join(kind)}")
        return text.lower()
    if kind == "str":
        return text
    if not re.fullmatch(r"[0-9]+", text):
        raise ConfigError(env, f"{text!r} is not a whole number")
    number = int(text)
    if kind == "port" and not 1 <= number <= 65535:
        raise ConfigError(env, f"port {number} is out of range 1-65535")
    if kind == "ms" and number <= 0:
        raise ConfigError(env, "must be a positive number of milliseconds")
    return number


def load_for_command(argv: list[str], parser: configargparse.ArgParser | None = None
                     ) -> configargparse.Namespace:
    """:func:`load` for an operator command: a bad setting prints one line and exits 2."""
    try:
        return load(argv, parser=parser)
    except ConfigError as exc:
        print(f"electric: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load(argv: list[str] | None = None, env: dict[str, str] | None = None,
         parser: configargparse.ArgParser | None = None) -> configargparse.Namespace:
    """Parse and validate settings. Raises ConfigError; argparse errors exit(2) themselves
    with one line."""
    parser = parser or build_parser()
    try:
        check_config_file(list(argv if argv is not None else sys.argv[1:]), parser)
    except ConfigFileProblem as exc:
        raise ConfigError("--config", str(exc)) from None
    ns = parser.parse_args(args=argv, env_vars=env) if env is not None else parser.parse_args(argv)
    return validate(ns)


def printable(ns: configargparse.Namespace) -> list[tuple[str, str]]:
    """(ENV_NAME, value) pairs with secrets redacted, for --print-config and logs."""
    rows = []
    for flag, env, _default, _kind, _help in OPTIONS:
        dest = _dest(flag)
        value = getattr(ns, dest)
        if dest in SECRET_SETTINGS and value:
            value = REDACTED
        elif dest == "connectors":
            value = ";".join(c.redacted_url() for c in value)
        elif value is None:
            value = "embedded"
        rows.append((env, str(value)))
    return rows
