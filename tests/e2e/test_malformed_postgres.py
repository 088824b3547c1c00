"""Malformed input on the Postgres replication listener (POSTGRES_REPLICATION_PORT) of a
running Electric: garbage startup packets, oversized and negative lengths, junk in the middle
of an admitted (password-authenticated) replication session, random bytes — structured
(hypothesis, fixed example counts) and random. After every batch: the process is up, an
admitted replication connection opened before the first batch still answers IDENTIFY_SYSTEM,
a fresh one is served, RSS has not run away; at the end the real subscriber (a Postgres
subscription) still receives rows. The whole suite runs twice: in plain text, and over TLS
(Electric with a certificate from a CA made for the run; every bad input then travels inside
the TLS session, after the SSLRequest)."""

from __future__ import annotations

import random
import socket
import struct
import time
import uuid

import psycopg2
import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from tests.chaos.listeners import (
    ElectricUnderTest,
    Guard,
    PgFrontend,
    check_fuzzed,
    pg_message,
    poke,
    poke_socket,
    startup_packet,
)
from tests.support.pgwire import start_tls
from tests.support.tls import make_ca
from tests.support.waiting import wait_until

EXAMPLES = 100
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
SLOT = "pg_a"  # the connector's name: the publisher admits replication connections for it
REPLICATION = {"user": "electric", "database": "electric", "replication": "database",
               "application_name": SLOT}



@pytest.fixture(scope="module", params=["plain", "tls"])
def target(request, pg_factory, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp(f"mal_pg_{request.param}"))
    ca = make_ca(f"{workdir}/ca") if request.param == "tls" else None
    t = ElectricUnderTest(pg_factory("malformed"), workdir, tls=ca)
    yield t
    t.close()


def admitted(target) -> PgFrontend:
    c = PgFrontend(target.port("POSTGRES_REPLICATION_PORT"), tls=target.client_tls())
    tags = [t for t, _ in c.login(target.electric.replication_password(), **REPLICATION)]
    assert tags and tags[0] == b"R" and tags[-1] == b"Z", tags  # AuthenticationOk .. Ready
    return c


def identify(c: PgFrontend) -> None:
    c.query("IDENTIFY_SYSTEM")
    assert [t for t, _ in c.read_until(b"Z")] == [b"T", b"D", b"C", b"Z"]


@pytest.fixture(scope="module")
def guard(target):
    steady = {}

    def well_formed() -> None:
        if "conn" not in steady:
            steady["conn"] = admitted(target)
        identify(steady["conn"])
        fresh = admitted(target)
        identify(fresh)
        fresh.close()

    g = Guard(target.electric, "postgres", well_formed)
    g.warm()
    yield g
    print("\n" + g.summary())


def send(target, *parts: bytes) -> bytes:
    """Bad input on a fresh connection (inside TLS when the target has it)."""
    context = target.client_tls()
    wrap = (lambda sock: start_tls(sock, context)) if context is not None else None
    return poke(target.port("POSTGRES_REPLICATION_PORT"), list(parts), wrap=wrap)


def send_admitted(target, *parts: bytes) -> bytes:
    """Bad input in a session that has passed the password exchange and been admitted."""
    client = admitted(target)
    return poke_socket(client.sock, list(parts), target.port("POSTGRES_REPLICATION_PORT"))


def plaintext(target, data: bytes) -> bytes:
    """Bytes in the clear, whatever the target: over TLS they must be refused cleanly."""
    port = target.port("POSTGRES_REPLICATION_PORT")
    return poke_socket(socket.create_connection(("127.0.0.1", port), timeout=2.0), data, port)


# -- structured ------------------------------------------------------------------------------

params = st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=5)
version = st.one_of(st.sampled_from([196608, 196609, 131072, 80877103, 80877104, 80877102]),
                    st.integers(0, 2**32 - 1))


def test_startup_packets(target, guard):
    cases = []

    @FUZZ
    @given(params, version, st.one_of(st.none(), st.integers(0, 2**32 - 1)), st.binary(max_size=40))
    def case(kv, ver, length, tail):
        packet = startup_packet({k.replace("\0", ""): v.replace("\0", "") for k, v in kv.items()},
                                ver)
        if length is not None:
            packet = struct.pack(">I", length) + packet[4:]
        send(target, packet + tail)
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


message = st.builds(
    lambda tag, body, fix: (bytes([tag]) + struct.pack(">I", len(body) + 4) + body) if fix
    else bytes([tag]) + struct.pack(">I", len(body) ^ 0x5A5A) + body,
    st.integers(0, 255), st.binary(max_size=60), st.booleans())


def test_junk_mid_session(target, guard):
    """An admitted replication session that, after a valid command, sends junk messages."""
    cases = []

    @FUZZ
    @given(st.lists(message, min_size=1, max_size=5), st.booleans())
    def case(messages, identify_first):
        first = pg_message(b"Q", b"IDENTIFY_SYSTEM\0") if identify_first else b""
        send_admitted(target, first, *messages)
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


def test_query_texts(target, guard):
    cases = []

    @FUZZ
    @given(st.lists(st.text(max_size=60), min_size=1, max_size=3))
    def case(texts):
        queries = [pg_message(b"Q", t.replace("\0", "").encode() + b"\0") for t in texts]
        send_admitted(target, *queries)
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


# -- hand-written and random -----------------------------------------------------------------

SPECIFIC = [
    struct.pack(">I", 0x7FFFFFFF) + struct.pack(">I", 196608) + b"x" * 100,
    struct.pack(">I", 0xFFFFFFFF) + b"\0" * 8,
    struct.pack(">I", 3),
    struct.pack(">I", 0),
    struct.pack(">I", 8) + struct.pack(">I", 80877103) + b"junk after ssl request",
    struct.pack(">I", 8) + struct.pack(">I", 80877104) + b"\x16\x03\x01",
    struct.pack(">I", 16) + struct.pack(">I", 80877102) + b"\0\0\0\1\0\0\0\2",
    b"\x00\x00\x00\x05GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    startup_packet({"user": "x" * 100_000}),
    startup_packet(dict.fromkeys(map(str, range(2000)), "v")),
    startup_packet({"user": "u"})[:-1],  # missing the final NUL
    # the password exchange: plain-text password, garbage SASL, queries instead of a password
    startup_packet({"user": "u", "database": "d"}) + pg_message(b"p", b"password\0"),
    startup_packet(REPLICATION) + pg_message(b"p", b"SCRAM-SHA-256\0\xff\xff\xff\xff"),
    startup_packet(REPLICATION) + pg_message(b"p", b"SCRAM-SHA-256\0\0\0\0\x05n,,n="),
    startup_packet(REPLICATION) + pg_message(b"p", b"MD5\0\0\0\0\0"),
    startup_packet(REPLICATION) + pg_message(b"Q", b"IDENTIFY_SYSTEM\0"),
    startup_packet(REPLICATION) + pg_message(b"p", b"") * 3,
    startup_packet({"user": "u", "replication": "true", "application_name": SLOT}),
    startup_packet({"user": "u", "replication": "database", "application_name": "\xff" * 3}),
]

# Sent after a successful password exchange and admission.
SPECIFIC_ADMITTED = [
    b"Q" + struct.pack(">I", 0x7FFFFFF0) + b"IDENT",
    b"Q" + struct.pack(">I", 2),
    b"Q" + struct.pack(">I", 0xFFFFFFFF),
    pg_message(b"Q", b"IDENTIFY_SYSTEM"),  # no NUL terminator
    pg_message(b"d", b"r" + b"\0" * 33),  # standby status outside COPY
    pg_message(b"c", b"") + pg_message(b"f", b"no\0"),
    pg_message(b"Q", b"START_REPLICATION SLOT \"nope\" LOGICAL 0/0\0") + pg_message(b"d", b"zz"),
    pg_message(b"Q", b"START_REPLICATION SLOT pg_a LOGICAL ZZ/ZZ\0"),
    pg_message(b"Q", b"START_REPLICATION SLOT pg_a LOGICAL 0/0 "
                     b"(proto_version '99', publication_names '\"\0"),
    pg_message(b"P", b"\0\0\0\0") + pg_message(b"S", b"") * 50,
    pg_message(b"X", b"") + b"after terminate",
    pg_message(b"Q", b"SELECT " + b"1," * 200_000 + b"1\0"),
    pg_message(b"p", b"late password\0"),
]


def test_specific_bad_inputs(target, guard):
    for data in SPECIFIC:
        send(target, data)
    for data in SPECIFIC_ADMITTED:
        send_admitted(target, data)
    # In the clear on a TLS port (or a plain one): refused or served, never a crash.
    plaintext(target, startup_packet(REPLICATION))
    plaintext(target, struct.pack(">II", 8, 80877103) + startup_packet(REPLICATION))
    cases = len(SPECIFIC) + len(SPECIFIC_ADMITTED) + 2
    guard.after_batch(cases)


def test_random_bytes(target, guard):
    rng = random.Random(5433)
    for _batch in range(3):
        for _ in range(40):
            blob = rng.randbytes(rng.randint(0, 3000))
            if rng.random() < 0.5:
                send_admitted(target, blob)
            else:
                send(target, blob)
        guard.after_batch(40)


def test_real_subscriber_still_streams(target, guard):
    """A row written by a Satellite client reaches the Postgres subscribed to Electric."""
    rid = str(uuid.uuid4())
    ws = websocket.create_connection(
        target.electric.ws_url, timeout=5,
        sslopt={"ca_certs": target.ca.ca} if target.ca else None)
    try:
        ws.send_binary(frames.encode(pb.SatAuthReq(id=f"pg-check-{rid}", token="u")))
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
                                                row_data=[rid.encode(), b"after fuzz", b"x"])),
            pb.SatTransOp(commit=pb.SatOpCommit())])))
        for _ in range(20):  # wait for the ack: closing earlier may drop the unwritten tx
            msg = frames.decode(ws.recv())
            if isinstance(msg, pb.SatPingResp) and msg.lsn == b"1":
                break
        else:
            raise AssertionError("transaction not acked")
    finally:
        ws.close()

    def replicated():
        conn = psycopg2.connect(target.pg.dsn(database=target.db))
        with conn, conn.cursor() as cur:
            cur.execute("SELECT content FROM entries WHERE id = %s", (rid,))
            rows = cur.fetchall()
        conn.close()
        return rows

    rows = wait_until(replicated, timeout=30, step=0.2, what="the row at the subscriber")
    assert rows == [("after fuzz",)], f"row never reached the subscriber\n{target.electric.log()}"
    guard.after_batch(1)
