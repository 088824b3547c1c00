import pytest

from electric.vaxine import etf
from electric.vaxine.etf import Atom
from electric.vaxine.stream import decode_wal_frame
from electric.vaxine.walproto import (
    StreamProtocolError,
    parse_start_response,
    start_request,
    stop_request,
)
from tests.fixtures.vaxine.golden import frames


def s7(seq):
    return [f for f in frames("s7_replication", 8088) if f["seq"] == seq][0]


@pytest.mark.parametrize("seq,start", [(2, 0), (15, (5354, 8837)), (23, "eof")])
def test_start_requests_byte_exact(seq, start):
    recorded = bytes.fromhex(s7(seq)["hex"])
    ref = etf.decode(recorded)[1]
    assert start_request(start, ref)[1] == recorded


def test_stop_request_and_start_response():
    recorded = bytes.fromhex(s7(10)["hex"])
    term = etf.decode(recorded)
    assert stop_request(term[2][1], term[1]) == recorded
    response = etf.decode(bytes.fromhex(s7(3)["hex"]))
    assert parse_start_response(response, response[1]) == response[2][1]
    with pytest.raises(StreamProtocolError):
        parse_start_response((Atom("error"), Atom("bad_proto")), response[1])


def test_decode_wal_frame_real_frame_and_cache():
    body = bytes.fromhex(s7(4)["hex"])
    term, tx, offset = decode_wal_frame(body)
    assert offset == (0, 4949) and term[0] == Atom("vx_wal_txn")
    again_term, again_tx, again_offset = decode_wal_frame(bytes(body))
    assert again_term is None and again_offset == offset  # served from the cache
    assert again_tx == tx and again_tx is not tx
    with pytest.raises(StreamProtocolError):
        decode_wal_frame(bytes.fromhex(s7(3)["hex"]))
