"""Backend wire protocol: byte vectors of docs/protocols.md §2."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electric.limits import DEFAULT
from electric.postgres import copyboth, pgtime, replies, wire
from electric.postgres.commands import (
    EmptyQuery,
    IdentifySystem,
    SetConfig,
    Show,
    StartReplication,
    Unsupported,
    parse_command,
)
from electric.postgres.wire import (
    BackendConnection,
    CancelRequest,
    CopyData,
    CopyDone,
    CopyFail,
    GSSENCRequest,
    HotStandbyFeedback,
    Phase,
    ProtocolError,
    Query,
    SSLRequest,
    StandbyStatusUpdate,
    StartupMessage,
    Terminate,
    UnsupportedMessage,
)


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# ------------------------------------------------------------------ frontend byte helpers

SSL_REQUEST = h("00000008 04d2162f")
GSSENC_REQUEST = h("00000008 04d21630")


def startup(**params: str) -> bytes:
    body = struct.pack(">I", 196608)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack(">I", len(body) + 4) + body


def msg(tag: bytes, body: bytes = b"") -> bytes:
    return tag + struct.pack(">I", len(body) + 4) + body


def query(text: str) -> bytes:
    return msg(b"Q", text.encode() + b"\0")


def status_update(w: int, f: int, a: int, t: int, reply: int) -> bytes:
    return msg(b"d", b"r" + struct.pack(">QQQqB", w, f, a, t, reply))


PG15_STARTUP = dict(
    user="x",
    database="test",
    replication="database",
    options=" -c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3",
    application_name="postgres_1",
    client_encoding="UTF8",
)


def ready_conn() -> BackendConnection:
    c = BackendConnection()
    c.receive_data(startup(**PG15_STARTUP))
    return c


# ------------------------------------------------------------------ startup phase


def test_ssl_and_gss_requests_then_startup():
    c = BackendConnection()
    assert c.receive_data(SSL_REQUEST) == [SSLRequest()]
    assert replies.encryption_denied() == b"N"
    assert c.receive_data(GSSENC_REQUEST) == [GSSENCRequest()]
    assert c.phase is Phase.STARTUP
    [ev] = c.receive_data(startup(**PG15_STARTUP))
    assert ev == StartupMessage((3, 0), PG15_STARTUP)
    assert c.phase is Phase.QUERY
    assert c.parameters["replication"] == "database"
    assert c.encoding == "utf-8"


def test_startup_split_across_reads_byte_by_byte():
    c = BackendConnection()
    data = SSL_REQUEST + startup(**PG15_STARTUP) + query("IDENTIFY_SYSTEM")
    events = []
    for i in range(len(data)):
        events += c.receive_data(data[i : i + 1])
    assert events == [
        SSLRequest(),
        StartupMessage((3, 0), PG15_STARTUP),
        Query("IDENTIFY_SYSTEM"),
    ]


def test_cancel_request():
    c = BackendConnection()
    [ev] = c.receive_data(h("00000010 04d2162e 00003039 7fffffff"))
    assert ev == CancelRequest(12345, 0x7FFFFFFF)
    assert c.phase is Phase.CLOSED
    assert c.receive_data(b"anything") == []  # ignored, the socket is closing


def test_empty_parameter_list_and_empty_value():
    c = BackendConnection()
    [ev] = c.receive_data(h("00000009 00030000 00"))
    assert ev == StartupMessage((3, 0), {})
    c = BackendConnection()
    [ev] = c.receive_data(startup(user="", database="d"))
    assert ev.parameters == {"user": "", "database": "d"}


def test_client_encoding_drives_query_decoding():
    c = BackendConnection()
    c.receive_data(startup(user="u", client_encoding="LATIN1"))
    assert c.encoding == "latin-1"
    [ev] = c.receive_data(msg(b"Q", "SHOW ä".encode("latin-1") + b"\0"))
    assert ev == Query("SHOW ä")


@pytest.mark.parametrize(
    "packet, match",
    [
        (h("00000004"), "invalid startup packet length"),
        (h("7fffffff"), "invalid startup packet length"),  # rejected before any body
        (h("ffffffff"), "invalid startup packet length"),
        (h("00000009 04d2162f 00"), "SSLRequest"),
        (h("0000000c 04d2162e 00000001"), "CancelRequest"),
        (h("0000000d 00020000 7573657200"), "unsupported frontend protocol 2.0"),
        (h("0000000c 00030000 75736572"), "not NUL-terminated"),
        (h("0000000e 00030000 7573657200 00"), "without a value"),
        (h("0000000b 00030000 00 0000"), "empty parameter name"),
        (h("00000010 00030000 75ff6572 00 7800 00"), "not valid UTF-8"),
    ],
)
def test_bad_startup_packets(packet, match):
    c = BackendConnection()
    with pytest.raises(ProtocolError, match=match) as ei:
        c.receive_data(packet)
    assert c.phase is Phase.CLOSED
    with pytest.raises(ProtocolError):  # stays failed
        c.receive_data(b"")
    assert replies.fatal_for(ei.value).startswith(b"E")


def test_oversized_startup_length_is_rejected_from_the_header_alone():
    c = BackendConnection()
    with pytest.raises(ProtocolError):
        c.receive_data(struct.pack(">I", 10_001))


def test_repeated_ssl_request_is_refused():
    c = BackendConnection()
    c.receive_data(SSL_REQUEST)
    with pytest.raises(ProtocolError, match="repeated"):
        c.receive_data(SSL_REQUEST)


def test_unsupported_protocol_sqlstate():
    with pytest.raises(ProtocolError) as ei:
        BackendConnection().receive_data(h("00000008 00040000"))
    assert ei.value.sqlstate == "0A000"


# ------------------------------------------------------------------ query / copy phases


def test_apply_worker_conversation():
    """What an apply worker sends (docs/protocols.md §2.2), as the parser sees it."""
    c = BackendConnection()
    assert c.receive_data(SSL_REQUEST) == [SSLRequest()]
    [st_] = c.receive_data(startup(**PG15_STARTUP))
    assert isinstance(st_, StartupMessage)
    [q1] = c.receive_data(query("SELECT pg_catalog.set_config('search_path', '', false);"))
    assert parse_command(q1.text) == SetConfig("search_path", "", False)
    [q2] = c.receive_data(query("IDENTIFY_SYSTEM"))
    assert parse_command(q2.text) == IdentifySystem()
    [q3] = c.receive_data(
        query(
            'START_REPLICATION SLOT "s" LOGICAL 0/0 '
            "(proto_version '1', publication_names '\"all_tables\"')"
        )
    )
    cmd = parse_command(q3.text)
    assert cmd == StartReplication(
        "s", 0, {"proto_version": "1", "publication_names": '"all_tables"'}
    )
    assert cmd.proto_version == 1 and cmd.publication_names == ["all_tables"]
    assert c.start_copy_both() == h("57 00000007 00 0000")
    assert c.phase is Phase.COPY_BOTH
    events = c.receive_data(
        status_update(0, 0, 0, 1234, 0) + status_update(0x258, 0x244, 0x258, 5678, 1)
    )
    assert events == [
        StandbyStatusUpdate(0, 0, 0, 1234, False),
        StandbyStatusUpdate(0x258, 0x244, 0x258, 5678, True),
    ]
    # PG15 sends Terminate straight from CopyBoth mode on DISABLE/DROP.
    assert c.receive_data(h("58 00000004")) == [Terminate()]
    assert c.phase is Phase.CLOSED


def test_copy_done_returns_to_query_phase():
    c = ready_conn()
    c.start_copy_both()
    assert c.receive_data(h("63 00000004")) == [CopyDone()]
    assert c.phase is Phase.QUERY
    assert c.receive_data(query("IDENTIFY_SYSTEM")) == [Query("IDENTIFY_SYSTEM")]


def test_copy_fail():
    c = ready_conn()
    c.start_copy_both()
    assert c.receive_data(msg(b"f", b"oops\0")) == [CopyFail("oops")]
    assert c.phase is Phase.QUERY


def test_hot_standby_feedback_and_other_copy_data():
    c = ready_conn()
    c.start_copy_both()
    fb = msg(b"d", b"h" + struct.pack(">qIIII", 99, 1, 2, 3, 4))
    fb_old = msg(b"d", b"h" + struct.pack(">qII", 99, 1, 2))
    other = msg(b"d", b"zzz")
    assert c.receive_data(fb + fb_old + other) == [
        HotStandbyFeedback(99, 1, 2, 3, 4),
        HotStandbyFeedback(99, 1, 2),
        CopyData(b"zzz"),
    ]


@pytest.mark.parametrize("n", [0, 32, 34])
def test_status_update_with_wrong_length(n):
    c = ready_conn()
    c.start_copy_both()
    with pytest.raises(ProtocolError, match="standby status update"):
        c.receive_data(msg(b"d", b"r" + b"\0" * n))


def test_start_copy_both_only_from_query_phase():
    c = BackendConnection()
    with pytest.raises(RuntimeError):
        c.start_copy_both()


@pytest.mark.parametrize(
    "data, tag, name",
    [
        (msg(b"P", b"\0SELECT 1\0\0\0"), "P", "Parse"),
        (msg(b"S"), "S", "Sync"),
        (msg(b"F", b"\0\0\0\0"), "F", "FunctionCall"),
        (msg(b"d", b"r"), "d", "CopyData"),  # CopyData outside copy mode
    ],
)
def test_unsupported_messages_in_query_phase(data, tag, name):
    assert ready_conn().receive_data(data) == [UnsupportedMessage(tag, name)]


def test_query_in_copy_mode_is_unsupported():
    c = ready_conn()
    c.start_copy_both()
    assert c.receive_data(query("IDENTIFY_SYSTEM")) == [UnsupportedMessage("Q", "Query")]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x01\0\0\0\x05", "invalid frontend message type"),
        (b"G", "invalid frontend message type"),  # fails on the first byte
        (h("51 00000003"), "invalid message length"),
        (h("51 7fffffff"), "exceeds the limit"),  # before allocating anything
        (msg(b"Q", b"no terminator"), "NUL-terminated"),
        (msg(b"Q", b"two\0strings\0"), "NUL-terminated"),
        (msg(b"Q", b""), "NUL-terminated"),
        (msg(b"Q", b"\xff\xfe\0"), "invalid byte sequence"),
        (msg(b"X", b"x"), "Terminate"),
    ],
)
def test_malformed_tagged_messages(data, match):
    c = ready_conn()
    with pytest.raises(ProtocolError, match=match):
        c.receive_data(data)
    assert c.phase is Phase.CLOSED


def test_oversize_error_uses_program_limit_sqlstate():
    c = BackendConnection(limits=replace(DEFAULT.postgres, publisher_max_message_size=100))
    c.receive_data(startup(user="u"))
    c.receive_data(query("x" * 90))
    with pytest.raises(ProtocolError) as ei:
        c.receive_data(h("51 00000066"))
    assert ei.value.sqlstate == "54000"


def test_eof_mid_message():
    c = ready_conn()
    c.receive_data(query("IDENTIFY_SYSTEM")[:5])
    assert c.receive_eof() is True
    assert ready_conn().receive_eof() is False


# ------------------------------------------------------------------ CopyBothResponse


def test_copy_both_response():
    assert wire.copy_both_response() == h("57 00000007 00 0000")


# ------------------------------------------------------------------ robustness (hypothesis)


def _feed(conn: BackendConnection, data: bytes, cut: int) -> None:
    try:
        conn.receive_data(data[:cut])
        conn.receive_data(data[cut:])
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_arbitrary_bytes_at_startup_only_raise_protocol_error(data, cut):
    _feed(BackendConnection(), data, cut)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_arbitrary_bytes_in_query_phase_only_raise_protocol_error(data, cut):
    _feed(ready_conn(), data, cut)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_arbitrary_bytes_in_copy_mode_only_raise_protocol_error(data, cut):
    c = ready_conn()
    c.start_copy_both()
    _feed(c, data, cut)


_frontend_message = st.builds(
    lambda tag, body: tag + struct.pack(">I", len(body) + 4) + body,
    st.sampled_from([b"Q", b"d", b"c", b"f", b"X", b"P", b"S", b"H"]),
    st.one_of(
        st.binary(max_size=40),
        st.builds(lambda b: b"r" + b, st.binary(min_size=33, max_size=34)),
        st.builds(lambda t: t.encode() + b"\0", st.text(max_size=40)),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_frontend_message, max_size=8), st.booleans(), st.integers(0, 400))
def test_structured_message_streams_only_raise_protocol_error(messages, copy_mode, cut):
    c = ready_conn()
    if copy_mode:
        c.start_copy_both()
    _feed(c, b"".join(messages), cut)

# ------------------------------------------------------------------ interop with real libpq clients
#
# A minimal publisher built only from this module, driven by libpq clients (psql,
# pg_recvlogical): proves the bytes are what libpq expects, without a Postgres server.


def _pg_bin(name: str) -> str | None:
    try:
        from electric.devenv import find_bindir

        path = os.path.join(find_bindir(), name)
        if os.path.exists(path):
            return path
    except Exception:
        pass
    return shutil.which(name)


class _FakePublisher:
    """Serves connections one after another on a background thread; records what it saw."""

    def __init__(self, server_version: str = "electric-0.0.1") -> None:
        self.server_version = server_version
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.seen: list[object] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with s:
                s.settimeout(10)
                try:
                    self._serve(s)
                except (OSError, ProtocolError) as exc:
                    self.seen.append(exc)

    def _serve(self, s: socket.socket) -> None:
        conn = BackendConnection()
        while True:
            data = s.recv(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                self.seen.append(ev)
                out = self._reply(conn, ev)
                if out:
                    s.sendall(out)
                if isinstance(ev, Terminate):
                    return

    def _reply(self, conn: BackendConnection, ev: object) -> bytes:
        if isinstance(ev, SSLRequest | GSSENCRequest):
            return replies.encryption_denied()
        if isinstance(ev, StartupMessage):
            params = replies.server_parameters(ev.parameters, self.server_version)
            return replies.startup_response(params, pid=4242)
        if isinstance(ev, CopyDone):
            return (
                copyboth.copy_done()
                + replies.command_complete("COPY 0")
                + replies.command_complete("START_REPLICATION")
                + replies.ready_for_query()
            )
        if not isinstance(ev, Query):
            return b""
        cmd = parse_command(ev.text)
        self.seen.append(cmd)
        rfq = replies.ready_for_query()
        if isinstance(cmd, EmptyQuery):
            return replies.empty_query_response() + rfq
        if isinstance(cmd, SetConfig):
            return replies.text_result([("set_config", "text")], [[cmd.value]]) + rfq
        if isinstance(cmd, IdentifySystem):
            cols = [
                ("systemid", "text"),
                ("timeline", "int4"),
                ("xlogpos", "text"),
                ("dbname", "text"),
            ]
            row = ["7000000000000000001", 1, "0/1", conn.parameters.get("database")]
            return replies.text_result(cols, [row], tag="IDENTIFY_SYSTEM") + rfq
        if isinstance(cmd, StartReplication):
            t = pgtime.pg_now_micros()
            return (
                conn.start_copy_both()
                + copyboth.primary_keepalive(cmd.lsn, t)
                + copyboth.xlog_data(0x0A, 0x0A, b"hello", t)
                + copyboth.xlog_data(0x14, 0x14, b"world", t)
                + copyboth.primary_keepalive(0x14, t, reply_requested=True)
            )
        if isinstance(cmd, Show):
            value = {"wal_level": "logical", "data_directory_mode": "0700"}.get(cmd.name, "")
            return replies.text_result([(cmd.name, "text")], [[value]], tag="SHOW") + rfq
        if isinstance(cmd, Unsupported):
            return replies.unsupported_response(cmd)
        return replies.error_response("ERROR", "0A000", "not in this fake") + rfq

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def publisher(request):
    p = _FakePublisher(getattr(request, "param", "electric-0.0.1"))
    yield p
    p.close()


def _conninfo(port: int) -> str:
    return f"host=127.0.0.1 port={port} dbname=test user=x replication=database connect_timeout=5"


@pytest.mark.skipif(_pg_bin("psql") is None, reason="psql not installed")
def test_psql_talks_to_the_backend(publisher):
    res = subprocess.run(
        [
            _pg_bin("psql"),
            "-X",
            "-A",
            "-t",
            _conninfo(publisher.port),
            "-c",
            "IDENTIFY_SYSTEM",
            "-c",
            "SHOW wal_level",
            "-c",
            "TIMELINE_HISTORY 1",
            "-c",
            "SELECT pg_catalog.set_config('search_path', '', false)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.stdout.split("\n")[:2] == ["7000000000000000001|1|0/1|test", "logical"], res
    assert "ERROR:  TIMELINE_HISTORY is not supported by Electric: TIMELINE_HISTORY 1" in res.stderr
    # The connection survived the ERROR: set_config (after it) was answered too.
    assert any(isinstance(e, SetConfig) for e in publisher.seen)
    assert any(isinstance(e, SSLRequest) for e in publisher.seen)
    assert not any(isinstance(e, Exception) for e in publisher.seen), publisher.seen


@pytest.mark.skipif(_pg_bin("pg_recvlogical") is None, reason="pg_recvlogical not installed")
# pg_recvlogical needs a numeric server_version to read dbname from IDENTIFY_SYSTEM.
@pytest.mark.parametrize("publisher", ["15.0"], indirect=True)
def test_pg_recvlogical_streams_and_ends_with_copy_done(publisher, tmp_path):
    out = tmp_path / "out.txt"
    res = subprocess.run(
        [
            _pg_bin("pg_recvlogical"),
            "-d",
            _conninfo(publisher.port),
            "-S",
            "s",
            "--start",
            "--no-loop",
            "-E",
            "0/14",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=all_tables",
            "-s",
            "1",
            "-f",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res
    assert out.read_text() == "hello\nworld\n"
    start = next(e for e in publisher.seen if isinstance(e, StartReplication))
    assert start.slot == "s" and start.lsn == 0
    assert start.options == {"proto_version": "1", "publication_names": "all_tables"}
    assert any(isinstance(e, StandbyStatusUpdate) for e in publisher.seen)
    assert any(isinstance(e, CopyDone) for e in publisher.seen)
    assert not any(isinstance(e, Exception | UnsupportedMessage) for e in publisher.seen), (
        publisher.seen
    )


_valid_query_phase_message = st.one_of(
    st.builds(
        lambda t: query(t),
        st.text(
            alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
            max_size=30,
        ),
    ),
    st.just(msg(b"S")),
    st.builds(lambda b: msg(b"P", b), st.binary(max_size=20)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_valid_query_phase_message, max_size=6), st.lists(st.integers(0, 400), max_size=5))
def test_chunking_does_not_change_events(messages, cuts):
    data = startup(**PG15_STARTUP) + b"".join(messages)
    whole = BackendConnection().receive_data(data)
    c = BackendConnection()
    pieces, prev = [], 0
    for cut in sorted(set(min(x, len(data)) for x in cuts)) + [len(data)]:
        pieces.append(data[prev:cut])
        prev = cut
    split = [ev for piece in pieces for ev in c.receive_data(piece)]
    assert split == whole
    assert len(whole) == 1 + len(messages)
