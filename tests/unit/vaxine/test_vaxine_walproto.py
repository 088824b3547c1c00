"""The WAL-stream protocol core, server side, against the golden s7 transcript."""

import pytest

from electric.vaxine import etf, walproto
from electric.vaxine.etf import Atom
from electric.vaxine.offset import VaxineOffset
from tests.fixtures.vaxine.golden import frames


def s7(seq: int) -> bytes:
    return bytes.fromhex([f for f in frames("s7_replication", 8088) if f["seq"] == seq][0]["hex"])


def test_start_then_stop_replies_byte_exact():
    session = walproto.ServerSession()
    action = session.handle(s7(2))
    assert isinstance(action, walproto.StartStream) and action.start == 0
    rep_id = etf.decode(s7(3))[2][1]
    assert session.started(action.ref, rep_id) == s7(3)
    stop = session.handle(s7(10))
    assert isinstance(stop, walproto.StopStream) and stop.reply == s7(11)
    assert session.rep_id is None


def test_resume_and_eof_starts():
    resume = walproto.ServerSession().handle(s7(15))
    assert isinstance(resume, walproto.StartStream)
    assert resume.start == VaxineOffset(5354, 8837)
    eof = walproto.ServerSession().handle(s7(23))
    assert isinstance(eof, walproto.StartStream) and eof.start == walproto.EOF


def test_stop_with_a_wrong_rep_id_is_bad_proto():
    session = walproto.ServerSession()
    session.started(etf.decode(s7(23))[1], etf.decode(s7(24))[2][1])
    action = session.handle(s7(42))
    assert isinstance(action, walproto.Close) and action.reply == s7(43)
    assert "unknown replication id" in action.reason


def test_refusals():
    session = walproto.ServerSession()
    assert session.handle(b"\x83junk").reply == walproto.BAD_PROTO
    assert session.handle(etf.encode((Atom("hello"),))).reply == walproto.BAD_PROTO
    ref = etf.decode(s7(2))[1]
    _ref, start = walproto.start_request((1, 2), ref)
    session.started(ref, ref)
    second = session.handle(start)
    assert isinstance(second, walproto.Close) and second.reply is None
    bad = etf.encode((walproto.VX_CLI_REQ, ref,
                      (walproto.START_REQ, [(walproto.OFFSET, (3, 1))])))
    refused = walproto.ServerSession().handle(bad)
    assert isinstance(refused, walproto.Close)
    assert etf.decode(refused.reply) == (walproto.VX_SRV_RES, ref,
                                         (walproto.ERROR, Atom("unknown_error")))
    assert refused.reason == "unsupported offset (3, 1)"


def test_txn_frame_decodes_back():
    body = s7(4)
    txid, dc_id, offset, ops = walproto.decode_txn(body)
    assert offset == (0, 4949)
    frame = walproto.txn_frame(4949, etf.encode_body(txid), etf.encode_body(ops),
                               etf.encode_body(dc_id))
    assert walproto.decode_txn(frame)[2] == (4949, 4949)


def test_client_session_resumes_after_what_it_accepted():
    session = walproto.ClientSession((5354, 8837))
    # the recorded resume request (its ref aside)
    assert etf.decode(session.connect())[2] == etf.decode(s7(15))[2]
    with pytest.raises(walproto.StreamProtocolError):
        session.on_start_reply(walproto.BAD_PROTO)
    # the server may send the transaction at the start offset again: dropped
    assert not session.accept(VaxineOffset(5354, 8837))
    assert session.accept(VaxineOffset(8837, 9000))
    assert not session.accept(VaxineOffset(8837, 9000))
    assert session.resume_point == (8837, 9000)


def test_client_session_from_eof_has_no_resume_offset_until_it_accepts():
    session = walproto.ClientSession("eof")
    assert session.last is None and session.resume_point == walproto.EOF
    _ref, request = walproto.start_request("eof")
    assert etf.decode(session.connect())[2] == etf.decode(request)[2]
    assert session.accept(VaxineOffset(0, 10)) and session.resume_point == (0, 10)
