"""Malformed input on the listeners of a standalone ``electric vaxine`` that a running
Electric uses as its Vaxine (embedded mode keeps its store in process and opens no such
ports): the Antidote protobuf API (VAXINE_API_PORT, 8087 by default) and the WAL
replication stream (VAXINE_REPLICATION_PORT, 8088): garbage frames, oversized lengths, unknown codes, mutated
protobuf, nonsense request orders, bad ETF and well-formed ETF of the wrong shape —
structured (hypothesis, fixed example counts) and random. After every batch: the process is
up, an API connection and a replication stream opened before the first batch still work (a
fresh write shows up on the old stream), fresh connections are served, RSS has not run away.
Fuzzed writes use keys outside ``rows:``, which Electric's readers skip."""

from __future__ import annotations

import random
import socket
import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electric.limits import DEFAULT
from electric.pb import antidote_pb2 as apb
from electric.vaxine import antidote, etf, walproto
from electric.vaxine.etf import Atom
from electric.vaxine.framing import encode_frame
from tests.chaos.harness import StandaloneVaxine
from tests.chaos.listeners import ElectricUnderTest, Guard, check_fuzzed, poke

EXAMPLES = 100
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))



class Framed:
    """A blocking client for either port: length-prefixed frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, body: bytes) -> None:
        self.sock.sendall(encode_frame(body))

    def recv(self) -> bytes:
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return body
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data

    def call(self, message) -> object:
        self.send(antidote.encode_body(message))
        return antidote.decode_body(self.recv())

    def close(self) -> None:
        self.sock.close()


def static_write(conn: Framed, key: bytes, value: bytes) -> None:
    obj = antidote.bound_object(key, antidote.LWWREG)
    resp = conn.call(antidote.static_update([antidote.update_op(obj, antidote.reg_assign(value))]))
    assert isinstance(resp, apb.ApbCommitResp) and resp.success, resp


def static_read(conn: Framed, key: bytes) -> object:
    resp = conn.call(antidote.static_read([antidote.bound_object(key, antidote.LWWREG)]))
    assert isinstance(resp, apb.ApbStaticReadObjectsResp), resp
    return resp


def start_stream(port: int, offset) -> Framed:
    conn = Framed(port)
    ref, body = walproto.start_request(offset)
    conn.send(body)
    walproto.parse_start_response(etf.decode(conn.recv()), ref)
    return conn


class VaxineUnderTest:
    """A standalone store process, and an Electric using it as an external Vaxine (so its
    WAL-stream reader and API pool live through the fuzzing too)."""

    def __init__(self, pg, workdir: str):
        self.vaxine = StandaloneVaxine(f"{workdir}/vaxine/data").start()
        self.electric = _StandaloneProcess(self.vaxine.proc, f"{workdir}/vaxine/vaxine-standalone.log")
        self.service = ElectricUnderTest(pg, workdir, env=self.vaxine.env())

    def port(self, setting: str) -> int:
        return int(self.vaxine.env()[setting])

    def close(self) -> None:
        self.service.close()
        self.vaxine.kill()


class _StandaloneProcess:
    """What Guard and log_problems need of a process: ``proc``, ``log_path``, ``log()``."""

    def __init__(self, proc, log_path: str):
        self.proc, self.log_path = proc, log_path

    def log(self, tail: int = 80) -> str:
        with open(self.log_path, errors="replace") as f:
            return "--- standalone vaxine log (tail) ---\n" + "".join(f.readlines()[-tail:])


@pytest.fixture(scope="module")
def target(pg_factory, tmp_path_factory):
    t = VaxineUnderTest(pg_factory("malformed"), str(tmp_path_factory.mktemp("mal_vx")))
    yield t
    t.close()


@pytest.fixture(scope="module")
def guard(target):
    api, repl = target.port("VAXINE_API_PORT"), target.port("VAXINE_REPLICATION_PORT")
    steady: dict[str, Framed] = {}

    def well_formed() -> None:
        if not steady:
            steady["api"] = Framed(api)
            steady["stream"] = start_stream(repl, "eof")
        marker = f"fuzz:check:{uuid.uuid4()}".encode()
        static_write(steady["api"], marker, b"alive")
        static_read(steady["api"], marker)
        for _ in range(200):  # the old stream delivers the new transaction
            if marker in steady["stream"].recv():
                break
        else:
            raise AssertionError("the replication stream did not deliver a fresh write")
        fresh = Framed(api)
        static_read(fresh, marker)
        fresh.close()
        start_stream(repl, 0).close()

    g = Guard(target.electric, "vaxine", well_formed)
    g.warm()
    yield g
    print("\n" + g.summary())


def frame(body: bytes) -> bytes:
    return encode_frame(body)


# -- API port (8087) -------------------------------------------------------------------------

KEYS = [b"fuzz:a", b"fuzz:b", b"fuzz:" + b"k" * 300]
VALID_API = [
    antidote.static_read([antidote.bound_object(KEYS[0], antidote.LWWREG)]),
    antidote.static_update([antidote.update_op(antidote.bound_object(KEYS[0], antidote.LWWREG),
                                               antidote.reg_assign(b"v"))]),
    antidote.static_update([antidote.update_op(
        antidote.bound_object(KEYS[1], antidote.RRMAP),
        antidote.map_update([(b"f", antidote.LWWREG, antidote.reg_assign(b"x")),
                             (b"d", antidote.FLAG_DW, antidote.flag_set(True))]))]),
    antidote.start_transaction(),
    antidote.read_objects(b"\x83d\x00\x02no", [antidote.bound_object(KEYS[0], antidote.LWWREG)]),
    antidote.commit_transaction(b"\x83a\x01"),
    antidote.abort_transaction(b"garbage"),
]


def test_api_frames(target, guard):
    cases = []

    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=120)), min_size=1,
                    max_size=4))
    def case(items):
        poke(target.port("VAXINE_API_PORT"), b"".join(frame(bytes([c]) + b) for c, b in items))
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


def test_api_mutated_requests(target, guard):
    cases = []

    @FUZZ
    @given(st.sampled_from(range(len(VALID_API))),
           st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
           st.integers(1, 400))
    def case(which, flips, cut):
        data = bytearray(antidote.encode_body(VALID_API[which]))
        for pos, value in flips:
            data[pos % len(data)] = value
        poke(target.port("VAXINE_API_PORT"), frame(bytes(data[:cut])))
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


crdt_type = st.sampled_from(sorted(apb.CRDT_type.values()))
operation = st.one_of(
    st.builds(antidote.reg_assign, st.binary(max_size=40)),
    st.builds(antidote.flag_set, st.booleans()),
    st.builds(lambda k, t, v: antidote.map_update([(k, t, antidote.reg_assign(v))]),
              st.binary(max_size=8), crdt_type, st.binary(max_size=20)),
    st.builds(lambda k, t: antidote.map_update([], [(k, t)]), st.binary(max_size=8), crdt_type),
    st.just(apb.ApbUpdateOperation()),
)
update = st.builds(lambda key, t, op, bucket: apb.ApbUpdateOp(
    boundobject=apb.ApbBoundObject(key=key, type=t, bucket=bucket), operation=op),
    st.sampled_from(KEYS), crdt_type, operation, st.sampled_from([b"vax", b"", b"other"]))
api_message = st.one_of(
    st.builds(lambda ups: antidote.static_update(ups), st.lists(update, max_size=3)),
    st.builds(lambda d, ups: antidote.update_objects(d, ups), st.binary(max_size=12),
              st.lists(update, max_size=3)),
    st.builds(lambda d: antidote.commit_transaction(d), st.binary(max_size=12)),
    st.builds(lambda d: antidote.abort_transaction(d), st.binary(max_size=12)),
    st.builds(lambda ts: antidote.start_transaction(ts), st.one_of(st.none(),
                                                                   st.binary(max_size=12))),
    st.builds(lambda key, t: antidote.static_read([apb.ApbBoundObject(key=key, type=t,
                                                                       bucket=b"vax")]),
              st.sampled_from(KEYS), crdt_type),
)


def test_api_request_sequences(target, guard):
    """Well-formed requests in nonsense order: bogus descriptors, type clashes on one key,
    unknown CRDT types, empty operations; optionally inside a real interactive transaction."""
    cases = []

    @FUZZ
    @given(st.lists(api_message, min_size=1, max_size=6), st.booleans())
    def case(messages, with_txn):
        prefix = b""
        if with_txn:
            prefix = frame(antidote.encode_body(antidote.start_transaction()))
        poke(target.port("VAXINE_API_PORT"),
             prefix + b"".join(frame(antidote.encode_body(m)) for m in messages))
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


# -- replication port (8088) -----------------------------------------------------------------

terms = st.recursive(
    st.one_of(st.integers(-(2**70), 2**70), st.binary(max_size=12),
              st.sampled_from([Atom("vx_cli_req"), Atom("vx_cli_start_req"),
                               Atom("vx_cli_stop_req"), Atom("offset"), Atom("eof"),
                               Atom("nonode@nohost"), Atom("x")]),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda children: st.lists(children, max_size=4) | st.lists(children, max_size=4).map(tuple),
    max_leaves=12)
start_like = st.builds(
    lambda ref, offset: (Atom("vx_cli_req"), ref, (Atom("vx_cli_start_req"),
                                                   [(Atom("offset"), offset)])),
    terms, terms)


def test_replication_terms(target, guard):
    cases = []

    @FUZZ
    @given(st.one_of(terms, start_like), st.booleans())
    def case(term, twice):
        body = etf.encode(term)
        poke(target.port("VAXINE_REPLICATION_PORT"), frame(body) * (2 if twice else 1))
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


def test_replication_mutated_requests(target, guard):
    cases = []

    @FUZZ
    @given(st.sampled_from(["eof", 0, (1, 2)]),
           st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), max_size=6),
           st.integers(1, 200))
    def case(offset, flips, cut):
        _ref, body = walproto.start_request(offset)
        data = bytearray(body)
        for pos, value in flips:
            data[pos % len(data)] = value
        poke(target.port("VAXINE_REPLICATION_PORT"), frame(bytes(data[:cut])))
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


# -- hand-written and random -----------------------------------------------------------------

_, START_EOF = walproto.start_request("eof")
SPECIFIC_API = [
    struct.pack(">I", 0xFFFFFFFF),
    struct.pack(">I", DEFAULT.vaxine.max_frame + 1) + b"\x7b",
    struct.pack(">I", 0x7FFFFFFF) + b"x" * 1000,
    struct.pack(">I", 0),
    struct.pack(">I", 0) * 1000,
    frame(b""),
    frame(b"\xff"),
    frame(bytes([123])),  # ApbStaticReadObjects without required fields
    frame(bytes([118]) + b"\x0a\x00"),
    frame(antidote.encode_body(VALID_API[1]))[:-3],
    frame(bytes([122]) + b"\x0a\x02\x0a\x00" * 10_000),
    struct.pack(">I", 10) + b"\x7b",  # announced 10, sent 1, then EOF
]
SPECIFIC_REPL = [
    struct.pack(">I", 0xFFFFFFFF),
    struct.pack(">I", 1024 * 1024 + 1) + b"\x83",
    frame(b""),
    frame(b"\x83"),
    frame(b"\x84" + START_EOF[1:]),
    frame(b"\x83\x68\xff"),  # tuple arity 255, no elements
    frame(b"\x83\x6c\xff\xff\xff\xff"),  # list of 4 G elements
    frame(b"\x83\x6d\xff\xff\xff\xff"),  # binary of 4 GiB announced
    frame(b"\x83\x6e\xff" + b"\x00" + b"\x01" * 255),  # big integer
    frame(b"\x83\x50\x00\x00\x00\x10" + b"x\x9c" + b"\x00" * 10),  # compressed term
    frame(b"\x83" + b"\x68\x01" * 100_000 + b"\x61\x01"),  # deep nesting
    frame(b"\x83\x64\xff\xff" + b"a" * 100),  # atom longer than its data
    frame(START_EOF) * 2,  # second start on one connection
    frame(etf.encode((Atom("vx_cli_req"), 1, (Atom("vx_cli_stop_req"), 42)))),
    frame(etf.encode((Atom("vx_cli_req"), 1, (Atom("vx_cli_start_req"),
                                               [(Atom("offset"), (5, 2))])))),
    frame(etf.encode((Atom("vx_cli_req"), 1, (Atom("vx_cli_start_req"),
                                               [(Atom("offset"), (2**80, 2**81))])))),
    frame(etf.encode((Atom("vx_cli_req"), 1, (Atom("vx_cli_start_req"),
                                               [(Atom("offset"), (-1, 3))])))),
    frame(etf.encode((Atom("vx_cli_req"), 1, (Atom("vx_cli_start_req"), Atom("x"))))),
    frame(START_EOF) + b"junk after a good start",
]


def test_specific_bad_frames(target, guard):
    for data in SPECIFIC_API:
        poke(target.port("VAXINE_API_PORT"), data)
    for data in SPECIFIC_REPL:
        poke(target.port("VAXINE_REPLICATION_PORT"), data)
    n = len(SPECIFIC_API) + len(SPECIFIC_REPL)
    guard.after_batch(n)


def test_random_bytes(target, guard):
    rng = random.Random(8087)
    for _batch in range(3):
        for _ in range(40):
            blob = rng.randbytes(rng.randint(0, 3000))
            if rng.random() < 0.5:
                blob = frame(blob[:1000]) + blob[1000:]
            port = "VAXINE_API_PORT" if rng.random() < 0.5 else "VAXINE_REPLICATION_PORT"
            poke(target.port(port), blob)
        guard.after_batch(40)
