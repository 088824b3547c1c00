"""Malformed input on the HTTP listener (STATUS_PORT) of a running Electric: bad methods,
malformed request lines and headers, bad and hostile JSON for the migrations API (path
traversal in "vsn" included), huge bodies and Content-Lengths — structured (hypothesis, fixed
example counts) and random. After every batch: the process is up, a keep-alive connection
opened before the first batch and a fresh one both get /api/status, RSS has not run away.
The migrations directory is empty, so nothing a fuzzer sends can apply a migration."""

from __future__ import annotations

import http.client
import json
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chaos.listeners import ElectricUnderTest, Guard, check_fuzzed, poke

EXAMPLES = 100
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")


@pytest.fixture(scope="module")
def target(pg_factory, tmp_path_factory):
    t = ElectricUnderTest(pg_factory("malformed"), str(tmp_path_factory.mktemp("mal_http")))
    yield t
    t.close()


@pytest.fixture(scope="module")
def guard(target):
    port = target.port("STATUS_PORT")
    steady = {}

    def get_status(conn: http.client.HTTPConnection) -> None:
        conn.request("GET", "/api/status")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        assert "connectors" in json.loads(body)

    def well_formed() -> None:
        if "conn" not in steady:
            steady["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        get_status(steady["conn"])  # keep-alive connection living through the batch
        fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        get_status(fresh)
        fresh.close()

    g = Guard(target.electric, "http", well_formed)
    g.warm()
    yield g
    print("\n" + g.summary())


def send(target, data: bytes) -> bytes:
    return poke(target.port("STATUS_PORT"), data)


def status_of(reply: bytes) -> int | None:
    match = STATUS_LINE.match(reply)
    return int(match.group(1)) if match else None


def request(method: bytes, path: bytes, body: bytes = b"", headers: bytes = b"") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


# -- structured ------------------------------------------------------------------------------

token = st.binary(min_size=0, max_size=12)
header = st.tuples(st.binary(max_size=16), st.binary(max_size=40))


def test_request_shapes(target, guard):
    cases = []

    @FUZZ
    @given(token, st.binary(max_size=80), st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2",
                                                           b"", b"HTTP/1.1 extra", b"\x00"]),
           st.lists(header, max_size=5), st.binary(max_size=200), st.booleans())
    def case(method, path, version, headers, body, honest_length):
        head = method + b" " + path + (b" " + version if version else b"") + b"\r\n"
        for name, value in headers:
            head += name + b": " + value + b"\r\n"
        length = len(body) if honest_length else len(body) + 17
        head += b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
        reply = send(target, head + body)
        assert status_of(reply) != 500, reply[:200]
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


def test_json_bodies_for_migrations(target, guard):
    cases = []

    @FUZZ
    @given(json_values, st.sampled_from(["pg_a", "nope", "%2e%2e", "pg_a%00"]))
    def case(value, origin):
        reply = send(target, request(b"PUT", f"/api/migrations/{origin}".encode(),
                                     json.dumps(value).encode()))
        code = status_of(reply)
        assert code is not None and 400 <= code < 500, reply[:300]
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


def test_hostile_vsn(target, guard):
    """A vsn naming anything but an existing migration file is refused with a 4xx."""
    cases = []

    @FUZZ
    @given(st.one_of(st.text(max_size=40),
                     st.sampled_from(["../../../../etc/passwd", "..", ".", "/", "a/../../b",
                                      "\\..\\..\\x", "1\n2", "vsn\0", "%2e%2e"])))
    def case(vsn):
        reply = send(target, request(b"PUT", b"/api/migrations/pg_a",
                                     json.dumps({"vsn": vsn}).encode()))
        code = status_of(reply)
        assert code is not None and 400 <= code < 500, reply[:300]
        cases.append(1)

    case()
    check_fuzzed(guard, len(cases), EXAMPLES)


# -- hand-written and random -----------------------------------------------------------------

SPECIFIC = [
    b"GET\r\n\r\n",
    b"GET /api/status HTTP/9.9\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /api/status HTTP/1.1\r\nNoColonHere\r\n\r\n",
    b"GET /api/status HTTP/1.1\r\n" + b"X-A: b\r\n" * 300 + b"\r\n",
    b"GET /api/status HTTP/1.1\r\nX-Long: " + b"v" * 200_000 + b"\r\n\r\n",
    b"PUT /api/migrations/pg_a HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n{",
    b"PUT /api/migrations/pg_a HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}",
    b"PUT /api/migrations/pg_a HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}",
    b"PUT /api/migrations/pg_a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"PUT /api/migrations/pg_a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"FFFFFFFFFFFF\r\nabc",
    request(b"PUT", b"/api/migrations/pg_a", b"\xff\xfe not json"),
    request(b"PUT", b"/api/migrations/pg_a", b"{" * 50_000),  # deep nesting
    request(b"PUT", b"/api/migrations/pg_a", b"x" * (2 << 20)),  # 2 MiB body: over the limit
    request(b"DELETE", b"/api/status"),
    request(b"POST", b"/api/status", b"{}"),
    request(b"TRACE", b"/"),
    request(b"GET", b"*"),
    request(b"GET", b"http://evil.example/api/status"),
    request(b"G\xc3\xa9T", b"/api/status"),
    b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n" * 200,  # pipelined
    b"\r\n" * 5000,
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # TLS ClientHello
]


def test_specific_bad_requests(target, guard):
    failures = []
    for data in SPECIFIC:
        reply = send(target, data)
        if status_of(reply) == 500:
            failures.append((data[:60], reply[:300]))
    assert not failures, failures
    guard.after_batch(len(SPECIFIC))


# Found by this suite (they used to get a 500 or a dropped connection with a traceback in
# the log); now each gets a clean 4xx.
FORMER_BUGS = {
    # electric/http/server.py Router._answer: wsgi.input.read(length) raises OSError when the
    # client sends fewer bytes than Content-Length and closes -> pywsgi traceback + 500.
    "short_body": b"PUT /api/migrations/pg_a HTTP/1.1\r\nContent-Length: 7\r\n\r\n{}",
    # electric/http/server.py Request.json: json.loads on deeply nested input raises
    # RecursionError (not ValueError) -> logged at ERROR with a traceback, 500.
    "deep_json": request(b"PUT", b"/api/migrations/pg_a", b"[" * 200_000 + b"]" * 200_000),
    # electric/migrations.py check_vsn: no length bound; a 5000-char vsn reaches open() ->
    # ENAMETOOLONG -> 500 "unreadable" (with the server's migrations path in the body).
    "long_vsn": request(b"PUT", b"/api/migrations/pg_a", b'{"vsn": "' + b"a" * 5000 + b'"}'),
}


@pytest.mark.parametrize("name", sorted(FORMER_BUGS))
def test_former_bugs_answer_4xx(target, guard, name):
    reply = send(target, FORMER_BUGS[name])
    code = status_of(reply)
    assert code is not None and 400 <= code < 500, reply[:300]
    guard.after_batch(1)


def test_random_bytes(target, guard):
    rng = random.Random(5050)
    for _batch in range(3):
        for _ in range(40):
            blob = rng.randbytes(rng.randint(0, 3000))
            if rng.random() < 0.5:
                blob = b"PUT /api/migrations/pg_a HTTP/1.1\r\nContent-Length: " \
                       + str(len(blob)).encode() + b"\r\n\r\n" + blob
            send(target, blob)
        guard.after_batch(40)
