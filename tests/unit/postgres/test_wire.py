"""Backend wire protocol: byte vectors of docs/protocols.md §2."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electric.postgres import wire
from electric.postgres.wire import (
    BackendConnection,
    CancelRequest,
    CopyData,
    CopyDone,
    CopyFail,
    CreateReplicationSlot,
    DropReplicationSlot,
    EmptyQuery,
    Field,
    GSSENCRequest,
    HotStandbyFeedback,
    IdentifySystem,
    ListPublications,
    ListPublicationTables,
    Phase,
    ProtocolError,
    Query,
    RelationColumns,
    RelationInfo,
    SetConfig,
    SetParameter,
    Show,
    SSLRequest,
    StandbyStatusUpdate,
    StartReplication,
    StartupMessage,
    Terminate,
    TransactionControl,
    Unsupported,
    UnsupportedMessage,
    parse_command,
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
    assert wire.encryption_denied() == b"N"
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
    assert wire.fatal_for(ei.value).startswith(b"E")


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
    c = BackendConnection(max_message_size=100)
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


# ------------------------------------------------------------------ backend builders


def test_startup_response_bytes():
    assert wire.authentication_ok() == h("52 00000008 00000000")
    assert wire.ready_for_query() == h("5a 00000005 49")
    assert wire.ready_for_query("T") == h("5a 00000005 54")
    assert wire.backend_key_data(42, 0) == h("4b 0000000c 0000002a 00000000")
    assert wire.backend_key_data(0xFFFFFFFF, 1) == h("4b 0000000c ffffffff 00000001")
    assert wire.parameter_status("server_version", "electric-0.0.1") == (
        b"S" + struct.pack(">I", 4 + 15 + 15) + b"server_version\0electric-0.0.1\0"
    )
    params = wire.server_parameters({"application_name": "postgres_1"})
    assert params["client_encoding"] == "UTF8"  # absent → default (reference crashed)
    assert params["server_version"] == "electric-0.0.1"
    assert params["application_name"] == "postgres_1"
    out = wire.startup_response(params, pid=7)
    assert out.startswith(wire.authentication_ok())
    assert out.endswith(wire.backend_key_data(7, 0) + wire.ready_for_query("I"))
    assert out.count(b"S\0\0\0") == len(params)


def test_negotiate_protocol_version():
    assert wire.negotiate_protocol_version() == h("76 0000000c 00000000 00000000")
    assert (
        wire.negotiate_protocol_version(0, ["_pq_.x"])
        == h("76 00000013 00000000 00000001") + b"_pq_.x\0"
    )
    c = BackendConnection()
    [ev] = c.receive_data(h("00000019 00030002") + b"user\0u\0_pq_.x\0y\0\0")
    assert ev.protocol == (3, 2)
    out = wire.startup_response({"a": "b"}, pid=1, startup=ev)
    assert out.startswith(wire.negotiate_protocol_version(0, ["_pq_.x"]) + wire.authentication_ok())
    plain = BackendConnection().receive_data(startup(user="u"))[0]
    assert wire.startup_response({}, pid=1, startup=plain).startswith(wire.authentication_ok())


def test_row_description_and_data_row_bytes():
    rd = wire.row_description([Field.of("set_config", "text")])
    assert rd == h("54 00000023 0001") + b"set_config\0" + h(
        "00000000 0000 00000019 ffff ffffffff 0000"
    )
    assert wire.row_description([Field.of("relkind", "char")]).endswith(
        h("00000000 0000 00000012 0001 ffffffff 0000")
    )
    assert wire.row_description([Field.of("tablename", "name")]).endswith(
        h("00000000 0000 00000013 0040 ffffffff 0000")
    )
    assert wire.data_row([""]) == h("44 0000000a 0001 00000000")
    assert wire.data_row([None, 1, True, False, b"\x01"]) == h(
        "44 0000001e 0005 ffffffff 00000001 31 00000001 74 00000001 66 00000001 01"
    )


def test_text_result_set_config_vector():
    # the set_config answer: T(set_config text) D("") C("SELECT 1")
    out = wire.text_result([("set_config", "text")], [[""]])
    assert out == (
        wire.row_description([Field("set_config", 25, -1)])
        + h("44 0000000a 0001 00000000")
        + h("43 0000000d")
        + b"SELECT 1\0"
    )


def test_text_result_identify_system_and_custom_tag():
    out = wire.text_result(
        [("systemid", "text"), ("timeline", "int4"), ("xlogpos", "text"), ("dbname", "text")],
        [["7000000000000000001", 1, "0/1", "test"]],
        tag="IDENTIFY_SYSTEM",
    )
    assert out.endswith(b"C\0\0\0\x14IDENTIFY_SYSTEM\0")
    assert b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff" in out  # int4: oid 23, typlen 4
    with pytest.raises(ValueError):
        wire.text_result([("a", "text")], [["x", "y"]])


def test_text_result_multiple_rows_counts():
    out = wire.text_result(
        [("schemaname", "name"), ("tablename", "name")], [["public", "a"], ["public", "b"]]
    )
    assert out.endswith(b"C\0\0\0\x0dSELECT 2\0")
    assert out.count(b"D\0\0\0") == 2


def test_error_and_notice_response_bytes():
    body = b"SERROR\0VERROR\0C0A000\0Mnope\0\0"
    assert (
        wire.error_response("error", "0A000", "nope")
        == b"E" + struct.pack(">I", 4 + len(body)) + body
    )
    body = b"SWARNING\0VWARNING\0C01000\0Mm\0Dd\0Hh\0\0"
    assert wire.notice_response("WARNING", "01000", "m", detail="d", hint="h") == (
        b"N" + struct.pack(">I", 4 + len(body)) + body
    )
    # A NUL inside the text would end the field early: it is dropped.
    assert b"ab\0" in wire.error_response("FATAL", "08P01", "a\0b")


def test_unsupported_response():
    out = wire.unsupported_response(Unsupported("SHOW foo", "SHOW is not supported by Electric"))
    assert out.startswith(b"E")
    assert b"C0A000\0" in out and b"SERROR\0" in out
    assert b"SHOW is not supported by Electric: SHOW foo" in out
    assert out.endswith(wire.ready_for_query("I"))


def test_fatal_for():
    out = wire.fatal_for(ProtocolError("bad", "08P01"))
    assert out == wire.error_response("FATAL", "08P01", "bad")


def test_copy_and_misc_bytes():
    assert wire.copy_both_response() == h("57 00000007 00 0000")
    assert wire.copy_done() == h("63 00000004")
    assert wire.copy_data(b"xy") == h("64 00000006 7879")
    assert wire.empty_query_response() == h("49 00000004")
    assert wire.command_complete("COPY 0") == h("43 0000000b") + b"COPY 0\0"


SEND_TIME = wire.to_pg_micros(datetime(2022, 11, 23, 10, 0, 1, tzinfo=UTC))


def test_pg_epoch_time():
    assert SEND_TIME == 0x0002911F1ED96A40  # the send time of the test_slot worked example
    assert wire.to_pg_micros(datetime(2000, 1, 1)) == 0
    assert wire.from_pg_micros(SEND_TIME) == datetime(2022, 11, 23, 10, 0, 1, tzinfo=UTC)
    now = wire.pg_now_micros()
    assert abs(now - wire.to_pg_micros(datetime.now(UTC))) < 5_000_000


def test_xlog_data_begin_vector():
    begin = h("42 0000000000000014 0002911f1eca2800 00000000")
    assert wire.xlog_data(0xA, 0xA, begin, SEND_TIME) == h(
        "64 00000032 77 000000000000000a 000000000000000a 0002911f1ed96a40"
        "42 0000000000000014 0002911f1eca2800 00000000"
    )


def test_xlog_data_commit_vector():
    commit = h("43 00 0000000000000014 000000000000001e 0002911f1eca2800")
    assert wire.xlog_data(0x1E, 0x1E, commit, SEND_TIME) == h(
        "64 00000037 77 000000000000001e 000000000000001e 0002911f1ed96a40"
        "43 00 0000000000000014 000000000000001e 0002911f1eca2800"
    )


def test_keepalive_vector():
    assert wire.primary_keepalive(0, SEND_TIME) == h(
        "64 00000016 6b 0000000000000000 0002911f1ed96a40 00"
    )
    assert wire.primary_keepalive(0x1E, SEND_TIME, reply_requested=True)[-1:] == b"\x01"
    assert wire.primary_keepalive((1 << 64) - 1, 0)[6:14] == b"\xff" * 8


def test_builders_default_send_time_is_now():
    out = wire.primary_keepalive(5)
    (t,) = struct.unpack(">q", out[14:22])
    assert abs(t - wire.pg_now_micros()) < 5_000_000


# ------------------------------------------------------------------ normalisation + commands


def test_normalize_query():
    assert wire.normalize_query("SELECT  1 ;;\0\0") == "SELECT 1"
    assert wire.normalize_query("  a\n\t b  ") == "a b"
    assert wire.normalize_query("x 'a  \n b' \"c  d\"") == "x 'a  \n b' \"c  d\""
    assert wire.normalize_query("x 'it''s  ;' ;") == "x 'it''s  ;'"
    assert wire.normalize_query("x E'a\\'  b'") == "x E'a\\'  b'"
    assert wire.normalize_query("") == ""


PG14_LIST = (
    "SELECT DISTINCT t.schemaname, t.tablename\n  FROM pg_catalog.pg_publication_tables t\n"
    " WHERE t.pubname IN ('all_tables')"
)
PG15_LIST = (
    "SELECT DISTINCT t.schemaname, t.tablename \nFROM pg_catalog.pg_publication_tables t\n"
    " WHERE t.pubname IN ('all_tables')"
)
PG15_NUMERIC_LIST = (
    "SELECT DISTINCT t.schemaname, t.tablename \n, t.attnames\nFROM "
    "pg_catalog.pg_publication_tables t\n WHERE t.pubname IN ('all_tables')"
)
PG14_ATTRS = (
    "SELECT a.attname,       a.atttypid,       a.attnum = ANY(i.indkey)"
    "  FROM pg_catalog.pg_attribute a"
    "  LEFT JOIN pg_catalog.pg_index i"
    "       ON (i.indexrelid = pg_get_replica_identity_index(20000))"
    " WHERE a.attnum > 0::pg_catalog.int2"
    "   AND NOT a.attisdropped AND a.attgenerated = ''"
    "   AND a.attrelid = 20000"
    " ORDER BY a.attnum"
)
PG15_ATTRS = (
    "SELECT a.attnum,       a.attname,       a.atttypid,       a.attnum = ANY(i.indkey)"
    "  FROM pg_catalog.pg_attribute a"
    "  LEFT JOIN pg_catalog.pg_index i"
    "       ON (i.indexrelid = pg_get_replica_identity_index(20000))"
    " WHERE a.attnum > 0::pg_catalog.int2"
    "   AND NOT a.attisdropped"
    "   AND a.attrelid = 20000"
    " ORDER BY a.attnum"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "SELECT pg_catalog.set_config('search_path', '', false);",
            SetConfig("search_path", "", False),
        ),
        ("select pg_catalog.set_config('x', 'it''s', true)", SetConfig("x", "it's", True)),
        ("IDENTIFY_SYSTEM", IdentifySystem()),
        ("identify_system;", IdentifySystem()),
        (PG14_LIST, ListPublicationTables(["all_tables"], False)),
        (PG15_LIST, ListPublicationTables(["all_tables"], False)),
        (PG15_NUMERIC_LIST, ListPublicationTables(["all_tables"], True)),
        (
            "SELECT DISTINCT t.schemaname, t.tablename FROM pg_catalog.pg_publication_tables t "
            "WHERE t.pubname IN ('a', 'b''c', E'd\\\\e')",
            ListPublicationTables(["a", "b'c", "d\\e"], False),
        ),
        (
            "SELECT t.pubname FROM\n pg_catalog.pg_publication t WHERE\n t.pubname IN ('all_tables')",
            ListPublications(["all_tables"]),
        ),
        (
            "SELECT c.oid, c.relreplident, c.relkind  FROM pg_catalog.pg_class c  INNER JOIN "
            "pg_catalog.pg_namespace n        ON (c.relnamespace = n.oid) WHERE n.nspname = "
            "'public'   AND c.relname = 'items'",
            RelationInfo("public", "items"),
        ),
        (PG14_ATTRS, RelationColumns(20000, False)),
        (PG15_ATTRS, RelationColumns(20000, True)),
        ("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ", TransactionControl("BEGIN")),
        ("START TRANSACTION", TransactionControl("BEGIN")),
        ("COMMIT", TransactionControl("COMMIT")),
        ("ROLLBACK", TransactionControl("ROLLBACK")),
        ("DROP_REPLICATION_SLOT s WAIT", DropReplicationSlot("s", True)),
        ('DROP_REPLICATION_SLOT "My Slot"', DropReplicationSlot("My Slot", False)),
        (
            'CREATE_REPLICATION_SLOT "pg_16518_sync_16385_7" LOGICAL pgoutput USE_SNAPSHOT',
            CreateReplicationSlot("pg_16518_sync_16385_7", False, True, "pgoutput", "USE_SNAPSHOT"),
        ),
        (
            "CREATE_REPLICATION_SLOT \"x\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'use')",
            CreateReplicationSlot("x", True, True, "pgoutput", "(SNAPSHOT 'use')"),
        ),
        ("SHOW wal_segment_size", Show("wal_segment_size")),
        ("SET search_path = ''", SetParameter("search_path", "")),
        ("SET datestyle TO ISO", SetParameter("datestyle", "ISO")),
        ("", EmptyQuery()),
        (" ;; ", EmptyQuery()),
    ],
)
def test_parse_command(text, expected):
    assert parse_command(text) == expected


def test_start_replication_forms():
    cmd = parse_command(
        "START_REPLICATION SLOT \"s\" LOGICAL 2/A7F4A880 (proto_version '3', streaming 'on', "
        "two_phase 'on', publication_names '\"all_tables\",\"Other\"\"x\", plain', binary 'true')"
    )
    assert isinstance(cmd, StartReplication)
    assert cmd.slot == "s"
    assert cmd.lsn == 0x2A7F4A880
    assert cmd.proto_version == 3
    assert cmd.publication_names == ["all_tables", 'Other"x', "plain"]
    assert cmd.options["streaming"] == "on" and cmd.options["binary"] == "true"
    assert list(cmd.options) == [
        "proto_version",
        "streaming",
        "two_phase",
        "publication_names",
        "binary",
    ]

    cmd = parse_command("START_REPLICATION SLOT postgres_1 LOGICAL 0/258")
    assert cmd == StartReplication("postgres_1", 0x258, {})
    assert cmd.proto_version is None and cmd.publication_names == []

    cmd = parse_command('START_REPLICATION SLOT "s""q" LOGICAL 0/0 (messages, origin \'any\')')
    assert cmd.slot == 's"q'
    assert cmd.options == {"messages": None, "origin": "any"}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("START_REPLICATION 0/0", "physical replication"),
        ("START_REPLICATION SLOT s PHYSICAL 0/0", "physical replication"),
        ("START_REPLICATION SLOT s LOGICAL zz", "could not parse"),
        ("START_REPLICATION SLOT s LOGICAL 0/0 (proto_version", "could not parse"),
        ("START_REPLICATION SLOT s LOGICAL 0/0 (a 'b') extra", "could not parse"),
        ("START_REPLICATION SLOT s LOGICAL 123456789/0", "could not parse"),
        ("START_REPLICATION SLOT", "could not parse"),
        ("SELECT 1", "query not supported"),
        (
            "SELECT DISTINCT t.schemaname, t.tablename FROM pg_catalog.pg_publication_tables t WHERE t.pubname IN (1)",
            "query not supported",
        ),
        ("COPY public.items (id) TO STDOUT", "COPY is not supported"),
        ("TIMELINE_HISTORY 1", "TIMELINE_HISTORY is not supported"),
        ("READ_REPLICATION_SLOT s", "READ_REPLICATION_SLOT"),
        ("IDENTIFY_SYSTEM now", "syntax error"),
        ("BEGIN; SELECT 1", "multiple statements"),
        ("DROP_REPLICATION_SLOT s NOW", "could not parse"),
        ("CREATE_REPLICATION_SLOT s", "could not parse"),
    ],
)
def test_unsupported_commands(text, reason):
    cmd = parse_command(text)
    assert isinstance(cmd, Unsupported), cmd
    assert reason in cmd.reason


def test_semicolon_inside_quotes_is_not_a_second_statement():
    cmd = parse_command("SELECT pg_catalog.set_config('a', 'x;y', false)")
    assert cmd == SetConfig("a", "x;y", False)


def test_split_identifier_list():
    assert wire.split_identifier_list('"a", B ,"C""d"') == ["a", "b", 'C"d']
    with pytest.raises(ValueError):
        wire.split_identifier_list("a b")
    with pytest.raises(ValueError):
        wire.split_identifier_list("a,,b")


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


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_parse_command_never_raises(text):
    cmd = parse_command(text)
    assert cmd is not None


_words = st.sampled_from(
    [
        "START_REPLICATION",
        "SLOT",
        "LOGICAL",
        "0/0",
        "1/FF",
        '"s"',
        "s",
        "(",
        ")",
        ",",
        "'1'",
        "proto_version",
        "publication_names",
        "E'x\\\\'",
        "'",
        '"',
        "DROP_REPLICATION_SLOT",
        "CREATE_REPLICATION_SLOT",
        "WAIT",
        "TEMPORARY",
        "pgoutput",
        "SELECT",
        "SHOW",
        "SET",
        "=",
        "TO",
        ";",
        "IN",
        "\n",
        "pg_catalog.set_config",
        "BEGIN",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_words, max_size=14))
def test_parse_command_on_command_like_text_never_raises(words):
    parse_command(" ".join(words))
    parse_command("".join(words))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_normalize_is_idempotent(text):
    once = wire.normalize_query(text)
    assert wire.normalize_query(once) == once


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
            return wire.encryption_denied()
        if isinstance(ev, StartupMessage):
            params = wire.server_parameters(ev.parameters, self.server_version)
            return wire.startup_response(params, pid=4242)
        if isinstance(ev, CopyDone):
            return (
                wire.copy_done()
                + wire.command_complete("COPY 0")
                + wire.command_complete("START_REPLICATION")
                + wire.ready_for_query()
            )
        if not isinstance(ev, Query):
            return b""
        cmd = parse_command(ev.text)
        self.seen.append(cmd)
        rfq = wire.ready_for_query()
        if isinstance(cmd, EmptyQuery):
            return wire.empty_query_response() + rfq
        if isinstance(cmd, SetConfig):
            return wire.text_result([("set_config", "text")], [[cmd.value]]) + rfq
        if isinstance(cmd, IdentifySystem):
            cols = [
                ("systemid", "text"),
                ("timeline", "int4"),
                ("xlogpos", "text"),
                ("dbname", "text"),
            ]
            row = ["7000000000000000001", 1, "0/1", conn.parameters.get("database")]
            return wire.text_result(cols, [row], tag="IDENTIFY_SYSTEM") + rfq
        if isinstance(cmd, StartReplication):
            t = wire.pg_now_micros()
            return (
                conn.start_copy_both()
                + wire.primary_keepalive(cmd.lsn, t)
                + wire.xlog_data(0x0A, 0x0A, b"hello", t)
                + wire.xlog_data(0x14, 0x14, b"world", t)
                + wire.primary_keepalive(0x14, t, reply_requested=True)
            )
        if isinstance(cmd, Show):
            value = {"wal_level": "logical", "data_directory_mode": "0700"}.get(cmd.name, "")
            return wire.text_result([(cmd.name, "text")], [[value]], tag="SHOW") + rfq
        if isinstance(cmd, Unsupported):
            return wire.unsupported_response(cmd)
        return wire.error_response("ERROR", "0A000", "not in this fake") + rfq

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
