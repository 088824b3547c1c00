"""Only the right peers get in: the replication password (SCRAM-SHA-256), TLS on every listener
and to Postgres, the admin API rule, and the per-listener connection cap — Electric as a
process, real Postgres subscribers, and psql/psycopg2/raw clients as strangers."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import psycopg2
import psycopg2.extras
import pytest
import websocket

from electric.devenv import DEV_SCHEMA_SQL
from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from tests.support.electric import ROOT
from tests.support.pgwire import RawClient, error_fields, start_tls
from tests.support.postgres import drop_database, query, wait_rows
from tests.support.tls import make_ca
from tests.support.waiting import wait_until

SLOT = "pg_a"
REPLICATION = {"user": "electric", "database": "electric", "replication": "database",
               "application_name": SLOT}


def satellite_write(electric, content: str, ca: str | None = None) -> str:
    """Insert one row through a Satellite websocket client (Python); returns its id once acked.
    The row then reaches every Postgres only through its subscription to port 5433."""
    rid = str(uuid.uuid4())
    ws = websocket.create_connection(electric.ws_url, timeout=10,
                                     sslopt={"ca_certs": ca} if ca else None)
    try:
        ws.send_binary(frames.encode(pb.SatAuthReq(id=f"sec-{rid}", token="u")))
        for _ in range(2):
            ws.recv()
        ws.send_binary(frames.encode(pb.SatInStartReplicationResp()))
        ws.send_binary(frames.encode(pb.SatRelation(
            schema_name="public", table_name="entries", relation_id=1,
            columns=[pb.SatRelationColumn(name=c, type="text")
                     for c in ("id", "content", "content_b")])))
        ws.send_binary(frames.encode(pb.SatOpLog(ops=[
            pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=int(time.time() * 1000),
                                              lsn=b"1")),
            pb.SatTransOp(insert=pb.SatOpInsert(relation_id=1,
                                                row_data=[rid.encode(), content.encode(), b""])),
            pb.SatTransOp(commit=pb.SatOpCommit())])))
        for _ in range(50):
            msg = frames.decode(ws.recv())
            if isinstance(msg, pb.SatPingResp) and msg.lsn == b"1":
                return rid
        raise AssertionError("transaction not acked")
    finally:
        ws.close()


def wait_replicated(pg, db, rid: str, content: str) -> None:
    wait_rows(pg, db, "SELECT content FROM entries WHERE id = %s", [(content,)], args=(rid,))


def subconninfo(pg, db) -> dict[str, str]:
    (raw,), = query(pg, db, "SELECT subconninfo FROM pg_subscription WHERE subname = %s",
                    (SLOT,))
    return psycopg2.extensions.parse_dsn(raw)


def refusal(port: int, password: str, tls: ssl.SSLContext | None = None, **params) -> bytes:
    """The raw bytes of Electric's answer to a wrong password (ErrorResponse body)."""
    c = RawClient(port, tls=tls)
    (tag, body), = c.login(password, **{**REPLICATION, **params})
    assert tag == b"E", tag
    assert c.read_message() is None  # and the connection is closed
    return body


def psql(conninfo: str, sql: str, password: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", conninfo, "-XAtc", sql], capture_output=True, text=True,
                          env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5",
                               **env}, timeout=30)


@pytest.fixture
def database(pg_factory):
    pg = pg_factory("security")
    db = f"sec_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    pg.psql(DEV_SCHEMA_SQL, database=db)
    yield pg, db
    drop_database(pg, db)


def start(electric_factory, pg, db, workdir=None, **env):
    electric = electric_factory(env={"CONNECTORS": f"{SLOT}={pg.url(db)}",
                                     "POSTGRES_SLOT": f"slot_{db}", **env}, workdir=workdir)
    electric.wait_for(lambda: all(electric.get_json("/api/status")["connectors"].values()),
                      timeout=60, what="connector ready")
    return electric


# -- the replication password --------------------------------------------------------------


def test_default_startup_generates_a_password_subscribers_use_and_strangers_lack(
        database, electric_factory):
    pg, db = database
    electric = start(electric_factory, pg, db)
    port = int(electric.env["POSTGRES_REPLICATION_PORT"])
    # the real subscriber (Electric's own subscription) replicates
    rid = satellite_write(electric, "default start-up")
    wait_replicated(pg, db, rid, "default start-up")
    password = electric.replication_password()
    path = os.path.join(os.path.dirname(electric.env["OFFSET_STORAGE_FILE"]),
                        "replication_password")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(password) >= 24 and subconninfo(pg, db)["password"] == password

    # strangers: the same FATAL 28P01 whether the connector name exists or not
    known = refusal(port, "guess")
    unknown = refusal(port, "guess", application_name="no_such_connector")
    assert known == unknown and error_fields(known)["C"] == "28P01"
    assert error_fields(known)["M"] == 'password authentication failed for user "electric"'
    stranger = (f"host=127.0.0.1 port={port} user=electric dbname=electric "
                f"application_name={SLOT} replication=database")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(stranger, password="guess",
                         connection_factory=psycopg2.extras.LogicalReplicationConnection)
    result = psql(stranger, "IDENTIFY_SYSTEM", "guess")
    assert result.returncode != 0 and "password authentication failed" in result.stderr
    # no password at all: libpq gives up before sending anything; nothing is streamed
    result = psql(stranger, "IDENTIFY_SYSTEM", "", PGPASSFILE="/dev/null")
    assert result.returncode != 0 and "no password supplied" in result.stderr
    # with it, psql is admitted
    result = psql(stranger, "IDENTIFY_SYSTEM", password)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("|")[1:2] == ["1"]  # timeline

    listener = electric.get_json("/api/status")["detail"]["listeners"]["replication"]
    assert listener["failed_authentications"] >= 3 and listener["tls"] is False
    # the secret shows nowhere
    status = json.dumps(electric.get_json("/api/status"))
    with open(electric.log_path) as f:
        log = f.read()
    assert password not in status and password not in log
    assert "without TLS" in log  # 0.0.0.0 without a certificate: the start-up warning


def test_explicit_password_wrong_refused_right_admitted_subscriptions_updated(
        database, electric_factory, tmp_path):
    pg, db = database
    workdir = str(tmp_path / "electric")
    first = start(electric_factory, pg, db, workdir=workdir,
                  POSTGRES_REPLICATION_PASSWORD="first-secret")
    rid = satellite_write(first, "with the first password")
    wait_replicated(pg, db, rid, "with the first password")
    assert subconninfo(pg, db)["password"] == "first-secret"
    assert first.terminate() == 0

    ports = {k: v for k, v in first.env.items() if k.endswith("_PORT")}
    second = start(electric_factory, pg, db, workdir=workdir,
                   POSTGRES_REPLICATION_PASSWORD="second-secret", **ports)
    # Brought up to date: the subscription is re-set in the background once the connector
    # is ready, which may be just after the process reports ready.
    wait_until(lambda: subconninfo(pg, db)["password"] == "second-secret", timeout=30,
               what="the subscription's password to be updated")
    rid = satellite_write(second, "with the second password")
    wait_replicated(pg, db, rid, "with the second password")
    port = int(second.env["POSTGRES_REPLICATION_PORT"])
    assert error_fields(refusal(port, "first-secret"))["C"] == "28P01"
    tags = [t for t, _ in RawClient(port).login("second-secret", **REPLICATION)]
    assert tags[0] == b"R" and tags[-1] == b"Z"
    with open(second.log_path) as f:
        log = f.read()
    assert "first-secret" not in log and "second-secret" not in log

    printed = subprocess.run(
        [sys.executable, "-m", "electric.cli", "--print-config"], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": ROOT, "POSTGRES_REPLICATION_PASSWORD": "second-secret",
             "STATUS_API_TOKEN": "admin-secret"}, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert "second-secret" not in printed.stdout and "admin-secret" not in printed.stdout
    assert "POSTGRES_REPLICATION_PASSWORD=********" in printed.stdout


# -- TLS everywhere -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_stack(pg_factory, tmp_path_factory):
    """Electric with a certificate from a test CA, its connector reached over TLS
    (``sslmode=verify-full`` to a Postgres with ``ssl = on``)."""
    from tests.support.electric import ElectricProcess

    base = tmp_path_factory.mktemp("tls")
    ca = make_ca(str(base / "ca"))
    pg = pg_factory("security_tls", tls_files=(ca.cert, ca.key))
    db = f"tls_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    pg.psql(DEV_SCHEMA_SQL, database=db)
    url = f"{pg.url(db)}?sslmode=verify-full&sslrootcert={ca.ca}&application_name=electric_tls"
    electric = ElectricProcess(str(base / "electric"), env={
        "CONNECTORS": f"{SLOT}={url}", "POSTGRES_SLOT": f"slot_{db}",
        "TLS_CERT_FILE": ca.cert, "TLS_KEY_FILE": ca.key})
    electric.start(timeout=60)
    try:
        electric.wait_for(lambda: all(electric.get_json("/api/status")["connectors"].values()),
                          timeout=60, what="connector ready over TLS")
        yield electric, pg, db, ca
    finally:
        electric.kill()
        drop_database(pg, db)


def test_connector_reached_over_tls_and_subscriber_back_over_tls(tls_stack):
    electric, pg, db, ca = tls_stack
    # Electric's own sessions on the source Postgres are encrypted (verify-full passed)
    (encrypted,), = query(pg, db, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a"
                                  " USING (pid) WHERE s.ssl AND a.application_name ="
                                  " 'electric_tls'")
    assert encrypted >= 1
    assert subconninfo(pg, db)["sslmode"] == "require"
    rid = satellite_write(electric, "over wss and tls", ca=ca.ca)
    wait_replicated(pg, db, rid, "over wss and tls")
    # the subscription's walreceiver is connected to Electric over TLS
    assert electric.get_json("/api/status")["detail"]["connectors"][SLOT]["subscriber"][
        "streaming"]


def test_replication_port_tls_require_and_verify_full(tls_stack):
    electric, _pg, _db, ca = tls_stack
    port = int(electric.env["POSTGRES_REPLICATION_PORT"])
    password = electric.replication_password()
    base = (f"port={port} user=electric dbname=electric application_name={SLOT} "
            f"replication=database")
    for conninfo in (f"host=127.0.0.1 {base} sslmode=require",
                     f"host=localhost {base} sslmode=verify-full sslrootcert={ca.ca}"):
        conn = psycopg2.connect(conninfo, password=password,
                                connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            cur = conn.cursor()
            cur.execute("IDENTIFY_SYSTEM")
            assert cur.fetchone()[1] == 1
        finally:
            conn.close()
    # a stranger over TLS: the same 28P01
    assert error_fields(refusal(port, "guess", tls=ssl.create_default_context(cafile=ca.ca)))[
        "C"] == "28P01"
    # no TLS: refused, TLS is required once configured
    with pytest.raises(psycopg2.OperationalError, match="requires TLS"):
        psycopg2.connect(f"host=127.0.0.1 {base} sslmode=disable", password=password)
    # a wrong CA: the client refuses Electric
    other = make_ca(os.path.join(os.path.dirname(ca.ca), "other"))
    with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
        psycopg2.connect(f"host=localhost {base} sslmode=verify-full sslrootcert={other.ca}",
                         password=password)
    # GSSENCRequest is declined with N
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x30")
        assert sock.recv(1) == b"N"
        tls_sock = start_tls(sock, ssl.create_default_context(cafile=ca.ca))
        assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")


def test_https_status_and_wss_python_client(tls_stack):
    electric, _pg, _db, ca = tls_stack
    context = ssl.create_default_context(cafile=ca.ca)
    url = f"https://127.0.0.1:{electric.env['STATUS_PORT']}/api/status"
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        assert response.status == 200 and json.loads(response.read())["vaxine"] is True
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{electric.env['STATUS_PORT']}/api/status",
                               timeout=5).read()
    ws = websocket.create_connection(electric.ws_url, timeout=5, sslopt={"ca_certs": ca.ca})
    try:
        ws.send_binary(frames.encode(pb.SatAuthReq(id=f"wss-{uuid.uuid4()}", token="u")))
        assert isinstance(frames.decode(ws.recv()), pb.SatAuthResp)
    finally:
        ws.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        websocket.create_connection(electric.ws_url, timeout=5,
                                    sslopt={"cert_reqs": ssl.CERT_REQUIRED})


def test_wss_with_the_npm_client(tls_stack):
    from tests.interop.node_peer import NodePeer

    electric, pg, db, ca = tls_stack
    from_pg = str(uuid.uuid4())
    query(pg, db, "INSERT INTO entries (id, content) VALUES (%s, 'to node over wss')",
          (from_pg,))
    peer = NodePeer(env={"NODE_EXTRA_CA_CERTS": ca.ca})
    try:
        peer.call("connect", address="127.0.0.1", port=int(electric.env["WEBSOCKET_PORT"]),
                  appId=f"node-{uuid.uuid4()}", token="user-1", tls=True)
        peer.call("auth")
        peer.call("start", lsn_hex=b"0".hex())
        peer.wait(lambda e: e["event"] == "tx" and any(
            (c["record"] or {}).get("id") == from_pg for c in e["changes"]),
            timeout=30, what="the Postgres row over wss")
        assert not peer.errors(), peer.errors()
    finally:
        peer.close()


def test_unusable_certificate_stops_startup_naming_the_setting(tmp_path):
    ca = make_ca(str(tmp_path / "ca"))
    other = make_ca(str(tmp_path / "other"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ({"TLS_CERT_FILE": str(tmp_path / "missing.pem"), "TLS_KEY_FILE": ca.key},
         "TLS_CERT_FILE: cannot read"),
        ({"TLS_CERT_FILE": str(garbage), "TLS_KEY_FILE": ca.key}, "TLS_CERT_FILE:"),
        ({"TLS_CERT_FILE": ca.cert, "TLS_KEY_FILE": other.key}, "TLS_KEY_FILE:"),
        ({"TLS_CERT_FILE": ca.cert}, "TLS_KEY_FILE:"),
    ]
    for env, expected in cases:
        result = subprocess.run([sys.executable, "-m", "electric.cli"], capture_output=True,
                                text=True, timeout=60, cwd=str(tmp_path),
                                env={**os.environ, "PYTHONPATH": ROOT, **env})
        assert result.returncode == 2, (env, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (env, result.stderr)


# -- the admin API ----------------------------------------------------------------------------


def put(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, method="PUT", data=json.dumps(body).encode(),
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback (to be a 'remote' peer), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # no packet is sent; picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def migrate(electric, vsn: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in electric.env}
    return subprocess.run(
        [sys.executable, "-m", "electric.cli", "migrate", vsn], capture_output=True, text=True,
        timeout=120, env={**base, **electric.env, "PYTHONPATH": ROOT, **env})


def test_admin_token_guards_mutations_and_migrate_sends_it(database, electric_factory,
                                                           tmp_path):
    pg, db = database
    migrations = tmp_path / "migrations"
    (migrations / "20261204_sec").mkdir(parents=True)
    (migrations / "20261204_sec" / "postgres.sql").write_text(
        "CREATE TABLE public.sec_items (id uuid PRIMARY KEY, title text);\n")
    electric = start(electric_factory, pg, db, STATUS_API_TOKEN="admin-secret",
                     MIGRATIONS_DIR=str(migrations))
    url = f"{electric.status_url}/api/migrations/{SLOT}"
    for token in (None, "wrong", ""):
        status, body = put(url, {"vsn": "20261204_sec"}, token)
        assert (status, body["error"]) == (403, "forbidden"), (token, body)
    assert electric.get_json("/api/migrations")  # reading stays open
    refused = migrate(electric, "20261204_sec", STATUS_API_TOKEN="")
    assert refused.returncode == 1 and "403" in refused.stdout, refused.stdout
    applied = migrate(electric, "20261204_sec")  # the token from the environment
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"{SLOT}: applied 20261204_sec" in applied.stdout
    assert query(pg, db, "SELECT to_regclass('public.sec_items') IS NOT NULL") == [(True,)]
    with open(electric.log_path) as f:
        assert "admin-secret" not in f.read()


def test_without_a_token_mutations_answer_loopback_only(electric_factory):
    electric = electric_factory()
    port = electric.env["STATUS_PORT"]
    status, body = put(f"http://127.0.0.1:{port}/api/migrations/nope", {"vsn": "x"})
    assert status == 404, body  # past the admin rule: the origin is unknown
    remote = non_loopback_address()
    if remote is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    status, body = put(f"http://{remote}:{port}/api/migrations/nope", {"vsn": "x"})
    assert (status, body["error"]) == (403, "forbidden"), body
    assert "loopback" in body["message"]
    with urllib.request.urlopen(f"http://{remote}:{port}/api/status", timeout=5) as response:
        assert response.status == 200  # read-only endpoints stay open


# -- connection caps --------------------------------------------------------------------------


def test_connection_cap_refuses_cleanly_and_recovers(electric_factory):
    electric = electric_factory(env={"MAX_CONNECTIONS": "3", "LISTEN_ADDRESS": "127.0.0.1",
                                     "POSTGRES_REPLICATION_PASSWORD": "cap-secret"})
    ports = {name: int(electric.env[name]) for name in
             ("POSTGRES_REPLICATION_PORT", "STATUS_PORT", "WEBSOCKET_PORT")}

    def held(port: int) -> list[socket.socket]:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        electric.wait_for(lambda: cap_reached(port), timeout=10, what=f"cap reached on {port}")
        return socks

    def cap_reached(port: int) -> bool:
        # a probe that is itself refused proves the three are counted
        with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
            probe.settimeout(1)
            try:
                first = probe.recv(1)
            except TimeoutError:
                return False
            return first in (b"E", b"H")

    # Postgres port: FATAL 53300, the held connections keep working
    pg_port = ports["POSTGRES_REPLICATION_PORT"]
    socks = held(pg_port)
    c = RawClient(pg_port)
    (tag, body), = c.login("cap-secret", **REPLICATION)
    assert tag == b"E" and error_fields(body)["C"] == "53300", error_fields(body)
    socks[0].sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest on a held one
    assert socks[0].recv(1) == b"N"
    for s in socks:
        s.close()

    def login_code() -> str:
        (tag, body), = RawClient(pg_port).login("cap-secret", **REPLICATION)
        return error_fields(body)["C"]

    # authenticated again, then told the connector is not ready (there is none): 08004
    electric.wait_for(lambda: login_code() == "08004", timeout=10, what="publisher slots freed")

    # status port: 503 JSON, then served again
    socks = held(ports["STATUS_PORT"])
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{electric.status_url}/api/status", timeout=5)
    assert refused.value.code == 503
    assert json.loads(refused.value.read())["error"] == "too_many_connections"
    socks[0].sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert socks[0].recv(12) == b"HTTP/1.1 200"
    for s in socks:
        s.close()
    electric.wait_for(lambda: electric.get_json("/api/status"), timeout=10, what="status back")

    # websocket port: 503 before any upgrade, then served again
    socks = held(ports["WEBSOCKET_PORT"])
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(electric.ws_url, timeout=5)
    assert refused.value.status_code == 503
    for s in socks:
        s.close()

    def ws_served():
        try:
            websocket.create_connection(electric.ws_url, timeout=5).close()
            return True
        except websocket.WebSocketBadStatusException:
            return False

    electric.wait_for(ws_served, timeout=10, what="websocket served again")
    with open(electric.log_path) as f:
        log = f.read()
    assert "(MAX_CONNECTIONS)" in log
    assert "without TLS" not in log  # bound to loopback only: no plain-text warning
    remote = non_loopback_address()
    if remote is not None:  # LISTEN_ADDRESS=127.0.0.1: nothing answers on other addresses
        for port in ports.values():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((remote, port), timeout=5).close()
    # refusals are visible to operators: status detail and metrics
    listeners = electric.get_json("/api/status")["detail"]["listeners"]
    assert {name: st["refused_connections"] >= 1 for name, st in listeners.items()} == {
        "replication": True, "satellite": True, "status": True}, listeners
    assert listeners["replication"]["max_connections"] == 3
    with urllib.request.urlopen(f"{electric.status_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'electric_listener_refused_connections_total{listener="replication"}' in text
