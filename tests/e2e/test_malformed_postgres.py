"""Malformed input on the Postgres replication listener (POSTGRES_REPLICATION_PORT) of a
running Electric: garbage startup packets, oversized and negative lengths, junk in the middle
of an admitted replication session, random bytes — structured (hypothesis, fixed example
counts) and random. After every batch: the process is up, an admitted replication connection
opened before the first batch still answers IDENTIFY_SYSTEM, a fresh one is served, RSS has
not run away; at the end the real subscriber (a Postgres subscription) still receives rows."""

from __future__ import annotations

import random
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
    log_problems,
    pg_message,
    poke,
    startup_packet,
)

EXAMPLES = 100
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
SLOT = "pg_a"  # the connector's name: the publisher admits replication connections for it
REPLICATION = {"user": "electric", "database": "electric", "replication": "database",
               "application_name": SLOT}

counter: dict[str, int] = {k: 0 for k in ("startup", "session", "queries", "specific",
                                          "random")}


@pytest.fixture(scope="module")
def target(pg_factory, tmp_path_factory):
    t = ElectricUnderTest(pg_factory("malformed"), str(tmp_path_factory.mktemp("mal_pg")))
    yield t
    t.close()


def admitted(port: int) -> PgFrontend:
    c = PgFrontend(port)
    c.startup(**REPLICATION)
    tags = [t for t, _ in c.read_until(b"Z")]
    assert tags and tags[0] == b"R" and tags[-1] == b"Z", tags
    return c


def identify(c: PgFrontend) -> None:
    c.query("IDENTIFY_SYSTEM")
    assert [t for t, _ in c.read_until(b"Z")] == [b"T", b"D", b"C", b"Z"]


@pytest.fixture(scope="module")
def guard(target):
    port = target.port("POSTGRES_REPLICATION_PORT")
    steady = {}

    def well_formed() -> None:
        if "conn" not in steady:
            steady["conn"] = admitted(port)
        identify(steady["conn"])
        fresh = admitted(port)
        identify(fresh)
        fresh.close()

    g = Guard(target.electric, "postgres", well_formed)
    g.warm()
    yield g
    print("\n" + g.summary())


def send(target, *parts: bytes) -> bytes:
    return poke(target.port("POSTGRES_REPLICATION_PORT"), list(parts))


def admitted_prefix() -> bytes:
    return startup_packet(REPLICATION)


# -- structured ------------------------------------------------------------------------------

params = st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=5)
version = st.one_of(st.sampled_from([196608, 196609, 131072, 80877103, 80877104, 80877102]),
                    st.integers(0, 2**32 - 1))


@FUZZ
@given(params, version, st.one_of(st.none(), st.integers(0, 2**32 - 1)), st.binary(max_size=40))
def test_startup_packets(target, guard, kv, ver, length, tail):
    packet = startup_packet({k.replace("\0", ""): v.replace("\0", "") for k, v in kv.items()},
                            ver)
    if length is not None:
        packet = struct.pack(">I", length) + packet[4:]
    send(target, packet + tail)
    counter["startup"] += 1


message = st.builds(
    lambda tag, body, fix: (bytes([tag]) + struct.pack(">I", len(body) + 4) + body) if fix
    else bytes([tag]) + struct.pack(">I", len(body) ^ 0x5A5A) + body,
    st.integers(0, 255), st.binary(max_size=60), st.booleans())


@FUZZ
@given(st.lists(message, min_size=1, max_size=5), st.booleans())
def test_junk_mid_session(target, guard, messages, identify_first):
    """An admitted replication session that, after a valid command, sends junk messages."""
    first = pg_message(b"Q", b"IDENTIFY_SYSTEM\0") if identify_first else b""
    send(target, admitted_prefix() + first, *messages)
    counter["session"] += 1


@FUZZ
@given(st.lists(st.text(max_size=60), min_size=1, max_size=3))
def test_query_texts(target, guard, texts):
    queries = [pg_message(b"Q", t.replace("\0", "").encode() + b"\0") for t in texts]
    send(target, admitted_prefix(), *queries)
    counter["queries"] += 1


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
    admitted_prefix() + b"Q" + struct.pack(">I", 0x7FFFFFF0) + b"IDENT",
    admitted_prefix() + b"Q" + struct.pack(">I", 2),
    admitted_prefix() + b"Q" + struct.pack(">I", 0xFFFFFFFF),
    admitted_prefix() + pg_message(b"Q", b"IDENTIFY_SYSTEM"),  # no NUL terminator
    admitted_prefix() + pg_message(b"d", b"r" + b"\0" * 33),  # standby status outside COPY
    admitted_prefix() + pg_message(b"c", b"") + pg_message(b"f", b"no\0"),
    admitted_prefix() + pg_message(b"Q", b"START_REPLICATION SLOT \"nope\" LOGICAL 0/0\0")
    + pg_message(b"d", b"zzzz"),
    admitted_prefix() + pg_message(b"Q", b"START_REPLICATION SLOT pg_a LOGICAL ZZ/ZZ\0"),
    admitted_prefix() + pg_message(b"Q", b"START_REPLICATION SLOT pg_a LOGICAL 0/0 "
                                        b"(proto_version '99', publication_names '\"\0"),
    admitted_prefix() + pg_message(b"P", b"\0\0\0\0") + pg_message(b"S", b"") * 50,
    admitted_prefix() + pg_message(b"X", b"") + b"after terminate",
    admitted_prefix() + pg_message(b"Q", b"SELECT " + b"1," * 200_000 + b"1\0"),
    startup_packet({"user": "u", "database": "d"}) + pg_message(b"p", b"password\0"),
    startup_packet({"user": "u", "replication": "true", "application_name": SLOT}),
    startup_packet({"user": "u", "replication": "database", "application_name": "\xff" * 3}),
]


def test_specific_bad_inputs(target, guard):
    for data in SPECIFIC:
        send(target, data)
    guard.after_batch(len(SPECIFIC))
    counter["specific"] += len(SPECIFIC)


def test_random_bytes(target, guard):
    rng = random.Random(5433)
    for _batch in range(3):
        for _ in range(40):
            blob = rng.randbytes(rng.randint(0, 3000))
            send(target, admitted_prefix() + blob if rng.random() < 0.5 else blob)
        guard.after_batch(40)
        counter["random"] += 40


@pytest.mark.parametrize("name", ["startup", "session", "queries"])
def test_structured_batches_left_electric_healthy(guard, name):
    assert counter[name] >= EXAMPLES // 2, counter
    guard.after_batch(counter[name])


def test_real_subscriber_still_streams(target, guard):
    """A row written by a Satellite client reaches the Postgres subscribed to Electric."""
    rid = str(uuid.uuid4())
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{target.port('WEBSOCKET_PORT')}/ws", timeout=5)
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
    deadline = time.monotonic() + 30
    rows = []
    while time.monotonic() < deadline and not rows:
        conn = psycopg2.connect(target.pg.dsn(database=target.db))
        with conn, conn.cursor() as cur:
            cur.execute("SELECT content FROM entries WHERE id = %s", (rid,))
            rows = cur.fetchall()
        conn.close()
        time.sleep(0.2)
    assert rows == [("after fuzz",)], f"row never reached the subscriber\n{target.electric.log()}"


def test_report_cases(guard):
    print(f"\npostgres cases: {counter} total {sum(counter.values())}")
    assert sum(counter.values()) >= 300


def test_log_has_no_tracebacks(target, guard):
    problems = log_problems(target.electric)
    assert not problems, problems[:10]
