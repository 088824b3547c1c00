import base64

import psycopg2.extensions
import pytest

from electric import config
from electric.config import ConfigError, parse_connectors


def load(argv=(), env=None, tmp_ini=None):
    args = list(argv)
    if tmp_ini:
        args = ["--config", str(tmp_ini), *args]
    return config.load(args, env=env or {})


def test_defaults_match_the_reference():
    s = load()
    assert s.vaxine_host is None  # embedded
    assert (s.vaxine_api_port, s.vaxine_replication_port) == (8087, 8088)
    assert s.vaxine_connection_timeout == 5000
    assert (s.postgres_replication_port, s.status_port, s.websocket_port) == (5433, 5050, 5133)
    assert s.offset_storage_file == "./offset_storage_data.dat"
    assert s.migrations_file_name_suffix == "/postgres.sql"
    assert (s.postgres_publication, s.postgres_slot) == ("all_tables", "all_changes")
    assert s.connectors == []


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    ini = tmp_path / "e.ini"
    ini.write_text("[electric]\nstatus-port = 6001\nwebsocket-port = 6002\npostgres-slot = from_file\n")
    s = load(tmp_ini=ini)
    assert (s.status_port, s.websocket_port, s.postgres_slot) == (6001, 6002, "from_file")
    s = load(tmp_ini=ini, env={"STATUS_PORT": "7001", "POSTGRES_SLOT": "from_env"})
    assert (s.status_port, s.websocket_port, s.postgres_slot) == (7001, 6002, "from_env")
    s = load(["--status-port", "8001"], tmp_ini=ini,
             env={"STATUS_PORT": "7001", "POSTGRES_SLOT": "from_env"})
    assert s.status_port == 8001
    assert s.postgres_slot == "from_env"


def test_connectors_parse_with_timeout_and_escapes():
    (a, b) = parse_connectors(
        "postgres_1=postgresql://electric:p%40ss@localhost:54321/electric?timeout=2000;"
        " postgres_2=postgresql://u@db.example:5432/app"
    )
    assert (a.name, a.user, a.password, a.host, a.port, a.database, a.timeout_ms) == (
        "postgres_1", "electric", "p@ss", "localhost", 54321, "electric", 2000)
    assert (b.port, b.timeout_ms, b.password) == (5432, 5000, "")
    assert "password=p@ss" in a.dsn()
    assert "replication=database" in a.dsn(replication="database")
    assert "p@ss" not in a.redacted_url() and "p@ss" not in repr(a)


@pytest.mark.parametrize("value, problem", [
    ("a=postgresql://u@h:5432/db;a=postgresql://u@h:5433/db", "duplicate connector name"),
    ("a=mysql://u@h/db", "postgresql://"),
    ("a=postgresql://u@h:99999/db", "malformed URL"),
    ("a=postgresql://u@h:5432/", "one database"),
    ("a=postgresql://h:5432/db", "no user"),
    ("a=postgresql://u@h/db?timeout=abc", "timeout"),
    ("a=postgresql://u@h/db?sslmod=require", "unknown URL parameter(s) sslmod"),
    ("a=postgresql://u@h/db?sslmode=sometimes", "sslmode must be one of"),
    ("postgresql://u@h/db", "must look like"),
    ("bad-name=postgresql://u@h/db", "must look like"),
])
def test_bad_connectors_name_the_setting(value, problem):
    with pytest.raises(ConfigError) as exc:
        load(env={"CONNECTORS": value})
    assert exc.value.setting == "CONNECTORS"
    assert problem in str(exc.value)


def test_bad_connector_error_never_echoes_the_password():
    with pytest.raises(ConfigError) as exc:
        parse_connectors("bad name=postgresql://u:topsecret@h/db")
    assert "topsecret" not in str(exc.value)


@pytest.mark.parametrize("env, setting", [
    ({"STATUS_PORT": "0"}, "STATUS_PORT"),
    ({"WEBSOCKET_PORT": "65536"}, "WEBSOCKET_PORT"),
    ({"POSTGRES_REPLICATION_PORT": "abc"}, "POSTGRES_REPLICATION_PORT"),
    ({"VAXINE_CONNECTION_TIMEOUT": "0"}, "VAXINE_CONNECTION_TIMEOUT"),
    ({"STATUS_PORT": "5133"}, "WEBSOCKET_PORT"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ({"SATELLITE_AUTH_MODE": "jwt"}, "SATELLITE_AUTH_SIGNING_KEY"),
    ({"SATELLITE_AUTH_MODE": "jwt", "SATELLITE_AUTH_SIGNING_KEY": "not base64!"},
     "SATELLITE_AUTH_SIGNING_KEY"),
    ({"SATELLITE_AUTH_MODE": "jwt", "SATELLITE_AUTH_SIGNING_KEY": base64.b64encode(b"short").decode()},
     "SATELLITE_AUTH_SIGNING_KEY"),
    ({"SATELLITE_AUTH_MODE": "jwt", "SATELLITE_AUTH_SIGNING_KEY": base64.b64encode(b"k" * 48).decode()},
     "SATELLITE_AUTH_SIGNING_KEY"),
    ({"POSTGRES_SLOT": "drop table"}, "POSTGRES_SLOT"),
])
def test_bad_values_name_the_setting(env, setting):
    with pytest.raises(ConfigError) as exc:
        load(env=env)
    assert exc.value.setting == setting


def test_external_vaxine_frees_its_ports_from_the_clash_check():
    s = load(env={"VAXINE_HOST": "vaxine.internal", "VAXINE_API_PORT": "5050", "STATUS_PORT": "5051"})
    assert s.vaxine_host == "vaxine.internal"


def test_print_config_redacts_secrets():
    key = base64.b64encode(b"k" * 32).decode()
    s = load(env={"SATELLITE_AUTH_MODE": "jwt", "SATELLITE_AUTH_SIGNING_KEY": key,
                  "CONNECTORS": "a=postgresql://u:hunter2@h/db"})
    text = "\n".join(f"{k}={v}" for k, v in config.printable(s))
    assert key not in text and "hunter2" not in text
    assert "SATELLITE_AUTH_SIGNING_KEY=********" in text


def test_every_option_has_env_name_and_help():
    # argparse wraps long defaults at hyphens: compare with all white space removed.
    help_text = "".join(config.build_parser().format_help().split())
    for flag, env, default, _kind, _help in config.OPTIONS:
        assert flag in help_text and env in help_text
        assert "".join(f"(default: {default})".split()) in help_text, flag


def test_shipped_ini_documents_every_setting_and_loads():
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "electric.ini")
    text = open(path).read()
    for flag, env, _default, _kind, _help in config.OPTIONS:
        assert f"[{env}]" in text and f"\n{flag[2:]} =" in text, env
    s = config.load(["--config", path], env={})
    assert [c.name for c in s.connectors] == ["postgres_1", "postgres_2"]


def test_connector_urls_pass_libpq_parameters_through():
    (c,) = parse_connectors(
        "pg=postgresql://u:pw@db.example:5432/app?sslmode=verify-full&sslrootcert=/ca.pem"
        "&options=-c%20statement_timeout%3D5s&application_name=mine&connect_timeout=7"
        "&sslpassword=keypass&timeout=9000")
    dsn = psycopg2.extensions.parse_dsn(c.dsn(replication="database"))
    assert dsn["sslmode"] == "verify-full" and dsn["sslrootcert"] == "/ca.pem"
    assert dsn["options"] == "-c statement_timeout=5s" and dsn["application_name"] == "mine"
    assert dsn["connect_timeout"] == "7"  # the explicit libpq value wins over timeout=ms
    assert c.timeout_ms == 9000 and dsn["replication"] == "database"
    shown = c.redacted_url()
    assert "keypass" not in shown and "pw@" not in shown and "sslmode=verify-full" in shown


@pytest.mark.parametrize("env, setting", [
    ({"MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS"),
    ({"LISTEN_ADDRESS": "everywhere"}, "LISTEN_ADDRESS"),
    ({"TLS_KEY_FILE": "/k.pem"}, "TLS_CERT_FILE"),
    ({"TLS_CERT_FILE": "/nonexistent.pem", "TLS_KEY_FILE": "/k.pem"}, "TLS_CERT_FILE"),
    ({"SATELLITE_AUTH_MODE": "jwt",
      "SATELLITE_AUTH_SIGNING_KEY": base64.b64encode(b"k" * 32).decode(),
      "SATELLITE_AUTH_SIGNING_KEY_PREVIOUS": "c2hvcnQ="}, "SATELLITE_AUTH_SIGNING_KEY_PREVIOUS"),
])
def test_new_settings_are_checked(env, setting):
    with pytest.raises(ConfigError) as exc:
        load(env=env)
    assert exc.value.setting == setting


def test_new_secrets_are_redacted_and_listeners_default_open():
    s = load(env={"POSTGRES_REPLICATION_PASSWORD": "pw-1", "STATUS_API_TOKEN": "tok-1",
                  "SATELLITE_AUTH_SIGNING_KEY_PREVIOUS": "prev-1"})
    assert (s.listen_address, s.max_connections, s.satellite_auth_leeway) == ("0.0.0.0", 10000, 30)
    printed = dict(config.printable(s))
    assert printed["POSTGRES_REPLICATION_PASSWORD"] == config.REDACTED
    assert printed["STATUS_API_TOKEN"] == config.REDACTED
    assert printed["SATELLITE_AUTH_SIGNING_KEY_PREVIOUS"] == config.REDACTED


def test_sync_rules_file_is_compiled_at_load(tmp_path):
    assert load().sync_rules is None
    rules = tmp_path / "rules.toml"
    rules.write_text('[claims]\nsub = "string"\n\n[tables.items]\nrows = "owner_id = claims.sub"\n')
    s = load(env={"SYNC_RULES_FILE": str(rules)})
    assert s.sync_rules.rule(("public", "items")).visible
    assert ("SYNC_RULES_FILE", str(rules)) in config.printable(s)
    with pytest.raises(ConfigError, match=r"^SYNC_RULES_FILE: .*nope.toml: cannot read"):
        load(["--sync-rules-file", str(tmp_path / "nope.toml")])
    rules.write_text("[tables.items\n")
    with pytest.raises(ConfigError, match=rf"^SYNC_RULES_FILE: {rules}:1: not valid TOML"):
        load(["--sync-rules-file", str(rules)])
