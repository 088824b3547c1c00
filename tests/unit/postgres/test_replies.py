"""Reply builders: byte vectors of docs/protocols.md §2."""

from __future__ import annotations

import struct

import pytest

from electric.postgres import replies
from electric.postgres.commands import (
    Unsupported,
)
from electric.postgres.replies import (
    Field,
)
from electric.postgres.wire import (
    BackendConnection,
    ProtocolError,
)
from tests.support.pgwire import startup_packet


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# ------------------------------------------------------------------ backend builders


def test_startup_response_bytes():
    assert replies.authentication_ok() == h("52 00000008 00000000")
    assert replies.ready_for_query() == h("5a 00000005 49")
    assert replies.ready_for_query("T") == h("5a 00000005 54")
    assert replies.backend_key_data(42, 0) == h("4b 0000000c 0000002a 00000000")
    assert replies.backend_key_data(0xFFFFFFFF, 1) == h("4b 0000000c ffffffff 00000001")
    assert replies.parameter_status("server_version", "electric-0.0.1") == (
        b"S" + struct.pack(">I", 4 + 15 + 15) + b"server_version\0electric-0.0.1\0"
    )
    params = replies.server_parameters({"application_name": "postgres_1"})
    assert params["client_encoding"] == "UTF8"  # absent → default (reference crashed)
    assert params["server_version"] == "electric-0.0.1"
    assert params["application_name"] == "postgres_1"
    out = replies.startup_response(params, pid=7)
    assert out.startswith(replies.authentication_ok())
    assert out.endswith(replies.backend_key_data(7, 0) + replies.ready_for_query("I"))
    assert out.count(b"S\0\0\0") == len(params)


def test_negotiate_protocol_version():
    assert replies.negotiate_protocol_version() == h("76 0000000c 00000000 00000000")
    assert (
        replies.negotiate_protocol_version(0, ["_pq_.x"])
        == h("76 00000013 00000000 00000001") + b"_pq_.x\0"
    )
    c = BackendConnection()
    [ev] = c.receive_data(h("00000019 00030002") + b"user\0u\0_pq_.x\0y\0\0")
    assert ev.protocol == (3, 2)
    out = replies.startup_response({"a": "b"}, pid=1, startup=ev)
    assert out.startswith(replies.negotiate_protocol_version(0, ["_pq_.x"]) + replies.authentication_ok())
    plain = BackendConnection().receive_data(startup_packet({"user": "u"}))[0]
    assert replies.startup_response({}, pid=1, startup=plain).startswith(replies.authentication_ok())


def test_row_description_and_data_row_bytes():
    rd = replies.row_description([Field.of("set_config", "text")])
    assert rd == h("54 00000023 0001") + b"set_config\0" + h(
        "00000000 0000 00000019 ffff ffffffff 0000"
    )
    assert replies.row_description([Field.of("relkind", "char")]).endswith(
        h("00000000 0000 00000012 0001 ffffffff 0000")
    )
    assert replies.row_description([Field.of("tablename", "name")]).endswith(
        h("00000000 0000 00000013 0040 ffffffff 0000")
    )
    assert replies.data_row([""]) == h("44 0000000a 0001 00000000")
    assert replies.data_row([None, 1, True, False, b"\x01"]) == h(
        "44 0000001e 0005 ffffffff 00000001 31 00000001 74 00000001 66 00000001 01"
    )


def test_text_result_set_config_vector():
    # the set_config answer: T(set_config text) D("") C("SELECT 1")
    out = replies.text_result([("set_config", "text")], [[""]])
    assert out == (
        replies.row_description([Field("set_config", 25, -1)])
        + h("44 0000000a 0001 00000000")
        + h("43 0000000d")
        + b"SELECT 1\0"
    )


def test_text_result_identify_system_and_custom_tag():
    out = replies.text_result(
        [("systemid", "text"), ("timeline", "int4"), ("xlogpos", "text"), ("dbname", "text")],
        [["7000000000000000001", 1, "0/1", "test"]],
        tag="IDENTIFY_SYSTEM",
    )
    assert out.endswith(b"C\0\0\0\x14IDENTIFY_SYSTEM\0")
    assert b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff" in out  # int4: oid 23, typlen 4
    with pytest.raises(ValueError):
        replies.text_result([("a", "text")], [["x", "y"]])


def test_text_result_multiple_rows_counts():
    out = replies.text_result(
        [("schemaname", "name"), ("tablename", "name")], [["public", "a"], ["public", "b"]]
    )
    assert out.endswith(b"C\0\0\0\x0dSELECT 2\0")
    assert out.count(b"D\0\0\0") == 2


def test_error_and_notice_response_bytes():
    body = b"SERROR\0VERROR\0C0A000\0Mnope\0\0"
    assert (
        replies.error_response("error", "0A000", "nope")
        == b"E" + struct.pack(">I", 4 + len(body)) + body
    )
    body = b"SWARNING\0VWARNING\0C01000\0Mm\0Dd\0Hh\0\0"
    assert replies.notice_response("WARNING", "01000", "m", detail="d", hint="h") == (
        b"N" + struct.pack(">I", 4 + len(body)) + body
    )
    # A NUL inside the text would end the field early: it is dropped.
    assert b"ab\0" in replies.error_response("FATAL", "08P01", "a\0b")


def test_unsupported_response():
    out = replies.unsupported_response(Unsupported("SHOW foo", "SHOW is not supported by Electric"))
    assert out.startswith(b"E")
    assert b"C0A000\0" in out and b"SERROR\0" in out
    assert b"SHOW is not supported by Electric: SHOW foo" in out
    assert out.endswith(replies.ready_for_query("I"))


def test_fatal_for():
    out = replies.fatal_for(ProtocolError("bad", "08P01"))
    assert out == replies.error_response("FATAL", "08P01", "bad")


def test_empty_query_and_command_complete_bytes():
    assert replies.empty_query_response() == h("49 00000004")
    assert replies.command_complete("COPY 0") == h("43 0000000b") + b"COPY 0\0"
