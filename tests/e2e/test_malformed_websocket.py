"""Malformed input on the Satellite websocket listener (WEBSOCKET_PORT, /ws) of a running
Electric: bad websocket frames, text frames, huge announced lengths, bad protobuf, bad type
bytes, nonsense protocol sequences after auth — structured (hypothesis, fixed example counts)
and random. After every batch: the process is up, an authenticated client opened before the
first batch still answers, a fresh client is served, RSS has not run away. The whole suite
runs twice: over ws:// and over wss:// (Electric with a certificate from a CA made for the
run; every bad input then travels inside TLS)."""

from __future__ import annotations

import random
import uuid

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electric.pb import satellite_pb2 as pb
from electric.satellite import frames
from tests.chaos.listeners import (
    WS_HANDSHAKE,
    ElectricUnderTest,
    Guard,
    check_fuzzed,
    poke,
    ws_frame,
)
from tests.support.tls import make_ca

BINARY, TEXT, CLOSE, PING, PONG, CONT = 2, 1, 8, 9, 10, 0
EXAMPLES = 100
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


class Client:
    """A well-formed Satellite client (websocket-client)."""

    def __init__(self, target) -> None:
        self.ws = websocket.create_connection(
            target.electric.ws_url, timeout=5,
            sslopt={"ca_certs": target.ca.ca} if target.ca else None)
        self.ws.send_binary(frames.encode(pb.SatAuthReq(id=f"ok-{uuid.uuid4()}", token="u")))
        assert isinstance(self.recv(), pb.SatAuthResp)
        assert isinstance(self.recv(), pb.SatInStartReplicationReq)
        self.ws.send_binary(frames.encode(pb.SatInStartReplicationResp()))

    def recv(self):
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return frames.decode(data)
            assert opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG), opcode

    def ping(self) -> None:
        self.ws.send_binary(frames.encode(pb.SatPingReq()))
        for _ in range(10):
            msg = self.recv()
            if isinstance(msg, pb.SatPingResp):
                return
            if isinstance(msg, pb.SatPingReq):
                self.ws.send_binary(frames.encode(pb.SatPingResp()))
        raise AssertionError("no SatPingResp")


@pytest.fixture(scope="module", params=["ws", "wss"])
def target(request, pg_factory, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp(f"mal_{request.param}"))
    ca = make_ca(f"{workdir}/ca") if request.param == "wss" else None
    t = ElectricUnderTest(pg_factory("malformed"), workdir, tls=ca)
    yield t
    t.close()


@pytest.fixture(scope="module")
def guard(target):
    steady = {}

    def well_formed() -> None:
        if "client" not in steady:
            steady["client"] = Client(target)
        steady["client"].ping()  # a connection that lived through the whole batch
        fresh = Client(target)
        fresh.ping()
        fresh.ws.close()

    g = Guard(target.electric, "websocket", well_formed)
    g.warm()
    yield g
    print("\n" + g.summary())


def send(target, *parts: bytes) -> bytes:
    return poke(target.port("WEBSOCKET_PORT"), [WS_HANDSHAKE, *parts], tls=target.client_tls())


def auth_frames(client_id: str | None = None) -> list[bytes]:
    cid = client_id or f"fuzz-{uuid.uuid4()}"
    return [ws_frame(BINARY, frames.encode(pb.SatAuthReq(id=cid, token="u"))),
            ws_frame(BINARY, frames.encode(pb.SatInStartReplicationResp()))]


# -- structured ------------------------------------------------------------------------------

raw_frame = st.builds(
    lambda op, fin, rsv, mask, payload: ws_frame(op, payload, fin=fin, rsv=rsv, mask=mask),
    st.integers(0, 15), st.booleans(), st.integers(0, 7), st.booleans(),
    st.binary(max_size=200))


def test_raw_websocket_frames(target, guard):
    cases = []

    @FUZZ
    @given(st.lists(raw_frame, min_size=1, max_size=4))
    def case(frame_list):
        reply = send(target, *frame_list)
        assert reply.startswith(b"HTTP/1.1 101"), reply[:80]
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


def test_type_byte_and_body(target, guard):
    cases = []

    @FUZZ
    @given(st.integers(0, 255), st.binary(max_size=300), st.booleans())
    def case(type_byte, body, authenticated):
        parts = auth_frames() if authenticated else []
        send(target, *parts, ws_frame(BINARY, bytes([type_byte]) + body))
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


VALID = [
    pb.SatAuthReq(id="x", token="y"),
    pb.SatRelation(schema_name="public", table_name="nope", relation_id=7,
                   columns=[pb.SatRelationColumn(name="id", type="uuid")]),
    pb.SatOpLog(ops=[pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=1, lsn=b"1")),
                     pb.SatTransOp(insert=pb.SatOpInsert(relation_id=7, row_data=[b"a"])),
                     pb.SatTransOp(commit=pb.SatOpCommit())]),
    pb.SatInStartReplicationReq(lsn=b"\x83h\x02a\x01a\x02", options=[1, 2]),
    pb.SatPingResp(lsn=b"abc"),
]


def test_mutated_valid_messages_after_auth(target, guard):
    cases = []

    @FUZZ
    @given(st.sampled_from(range(len(VALID))), st.lists(st.tuples(st.integers(0, 10_000),
                                                                   st.integers(0, 255)), max_size=6),
           st.integers(0, 400))
    def case(which, flips, cut):
        data = bytearray(frames.encode(VALID[which]))
        for pos, value in flips:
            data[pos % len(data)] = value
        send(target, *auth_frames(), ws_frame(BINARY, bytes(data[:max(1, cut)])))
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


op = st.one_of(
    st.builds(lambda ts, lsn: pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=lsn)),
              st.integers(0, 2**64 - 1), st.binary(max_size=12)),
    st.builds(lambda rel, row: pb.SatTransOp(insert=pb.SatOpInsert(relation_id=rel,
                                                                  row_data=row)),
              st.integers(0, 9), st.lists(st.binary(max_size=20), max_size=4)),
    st.builds(lambda rel, row, old: pb.SatTransOp(update=pb.SatOpUpdate(
        relation_id=rel, row_data=row, old_row_data=old)),
        st.integers(0, 9), st.lists(st.binary(max_size=20), max_size=4),
        st.lists(st.binary(max_size=20), max_size=4)),
    st.builds(lambda rel, old: pb.SatTransOp(delete=pb.SatOpDelete(relation_id=rel,
                                                                  old_row_data=old)),
              st.integers(0, 9), st.lists(st.binary(max_size=20), max_size=4)),
    st.just(pb.SatTransOp(commit=pb.SatOpCommit())),
)
message = st.one_of(
    st.builds(lambda ops: pb.SatOpLog(ops=ops), st.lists(op, max_size=6)),
    st.builds(lambda rel, name, cols: pb.SatRelation(
        schema_name="public", table_name=name, relation_id=rel,
        columns=[pb.SatRelationColumn(name=c, type="text") for c in cols]),
        st.integers(0, 9), st.sampled_from(["nope", "", "entries_x", "pg_class"]),
        st.lists(st.text(max_size=8), max_size=4)),
    st.builds(lambda lsn, opts, n: pb.SatInStartReplicationReq(lsn=lsn, options=opts,
                                                               sync_batch_size=n),
              st.binary(max_size=16), st.lists(st.integers(0, 6), max_size=3),
              st.integers(-5, 5)),
    st.builds(lambda lsn: pb.SatPingResp(lsn=lsn), st.binary(max_size=8)),
    st.sampled_from([pb.SatPingReq(), pb.SatInStopReplicationReq(),
                     pb.SatInStopReplicationResp(), pb.SatInStartReplicationResp(),
                     pb.SatGetServerInfoReq(), pb.SatErrorResp(error_type=3),
                     pb.SatAuthResp(id="x"), pb.SatAuthReq(id="", token="")]),
)


def test_protocol_sequences_after_auth(target, guard):
    """Well-formed protobuf, nonsense order and content (relations name no real table, so
    nothing reaches the Postgres behind Electric)."""
    cases = []

    @FUZZ
    @given(st.lists(message, min_size=1, max_size=6))
    def case(messages):
        send(target, *auth_frames(), *(ws_frame(BINARY, frames.encode(m)) for m in messages))
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


# -- hand-written and random -----------------------------------------------------------------

SPECIFIC = [
    [ws_frame(TEXT, b"hello")],
    [ws_frame(TEXT, b"\x05")],
    [ws_frame(TEXT, b"\xff\xfe invalid utf-8")],
    [ws_frame(BINARY, b"")],
    [ws_frame(BINARY, b"", length=2**63 - 1)],
    [ws_frame(BINARY, b"x" * 10, length=1 << 30)],
    [ws_frame(BINARY, b"x" * 10, length=16 * 1024 * 1024 + 1)],
    [ws_frame(BINARY, b"\x05", fin=False), ws_frame(CONT, b"", length=1 << 40)],
    [ws_frame(CONT, b"\x05")],
    [ws_frame(BINARY, b"\x05", fin=False), ws_frame(BINARY, b"\x05")],
    [ws_frame(PING, b"p" * 126)],
    [ws_frame(PING, b"p", fin=False)],
    [ws_frame(CLOSE, b"\x03")],
    [ws_frame(CLOSE, b"\x0f\xa0" + b"\xff" * 50)],
    [ws_frame(BINARY, b"\x05", mask=False)],
    [ws_frame(BINARY, b"\x05", rsv=7)],
    [ws_frame(3, b"\x05")],
    [ws_frame(BINARY, bytes([13]))],
    [ws_frame(BINARY, bytes([255]) + b"\x00" * 10)],
    [ws_frame(BINARY, frames.encode(pb.SatAuthReq(id="i" * (1 << 20), token="t")))],
    [ws_frame(BINARY, b"\x05")[:3]],  # header cut short
    *[[ws_frame(BINARY, b"\x0b" + b"\x0a\xff\xff\xff\xff\x0f" + b"\x00" * n)] for n in range(4)],
]


def test_specific_bad_frames(target, guard):
    for parts in SPECIFIC:
        send(target, *parts)
        send(target, *auth_frames(), *parts)
    guard.after_batch(2 * len(SPECIFIC))


def test_bad_handshakes(target, guard):
    port = target.port("WEBSOCKET_PORT")
    cases = [
        b"GET /ws HTTP/1.1\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        WS_HANDSHAKE.replace(b"13", b"99"),
        WS_HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"!!"),
        WS_HANDSHAKE.replace(b"/ws", b"/" + b"w" * 70000),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"\r\n" * 1000,
        b"GET /ws HTTP/1.1\r\n" + b"X-Junk: y\r\n" * 5000 + b"\r\n",
        b"GET /ws HTTP/2\r\n\r\n",
        b"GET /ws HTTP/1.1 extra\r\n\r\n",
    ]
    for data in cases:
        poke(port, data, tls=target.client_tls())
    guard.after_batch(len(cases))


def test_random_bytes(target, guard):
    rng = random.Random(5133)
    port = target.port("WEBSOCKET_PORT")
    for _batch in range(3):
        for _ in range(40):
            blob = rng.randbytes(rng.randint(0, 2000))
            if rng.random() < 0.7:
                poke(port, [WS_HANDSHAKE, blob], tls=target.client_tls())
            else:
                poke(port, blob, tls=target.client_tls())
        guard.after_batch(40)
