"""WalStream against a scripted loopback server: bad transactions and reader failures."""

import gevent
import pytest
from gevent.server import StreamServer

from electric.vaxine import etf, stream
from electric.vaxine.etf import Atom
from electric.vaxine.framing import FrameDecoder, encode_frame
from electric.vaxine.rows import METADATA_KEY
from electric.vaxine.stream import START_RES, VX_SRV_RES, VX_WAL_TXN, StreamFailed, WalStream
from tests.fixtures.vaxine.golden import frames


@pytest.fixture(autouse=True)
def _fresh_decode_cache():
    # The decode cache is process-wide; keep other tests' first decode a real one.
    stream._decoded._entries.clear()
    yield
    stream._decoded._entries.clear()


def _good_txn_body() -> bytes:
    body = [f for f in frames("s7_replication", 8088) if f["seq"] == 4][0]["hex"]
    return bytes.fromhex(body)  # a real transaction at offset (0, 4949)


def _malformed_txn_body(offset) -> bytes:
    # A metadata:0 object whose effect is a map, not a list: reading it raises KeyError.
    ops = [((METADATA_KEY, b"bucket"), Atom("antidote_crdt_map_rr"), [], [{}])]
    return etf.encode((VX_WAL_TXN, 1, Atom("dc"), offset, ops))


def _serve(bodies):
    def handle(sock, _addr):
        decoder = FrameDecoder()
        request = []
        while not request:
            data = sock.recv(65536)
            if not data:
                return
            request = decoder.feed(data)
        ref = etf.decode(request[0])[1]
        sock.sendall(encode_frame(etf.encode((VX_SRV_RES, ref, (START_RES, ref)))))
        for body in bodies:
            sock.sendall(encode_frame(body))
        gevent.sleep(30)  # keep the connection open: an idle log

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    return server


def test_malformed_transaction_is_skipped_and_stream_continues():
    good = _good_txn_body()
    server = _serve([_malformed_txn_body((0, 100)), good])
    s = WalStream("127.0.0.1", server.server_port, 0, name="t")
    try:
        with gevent.Timeout(5):
            tx, offset = s.get()
        assert offset == (0, 4949)
        assert tx.changes
        assert not s._reader.dead
    finally:
        s.close()
        server.stop()


def test_reader_dying_wakes_the_consumer(monkeypatch):
    def boom(_body):
        raise RuntimeError("boom")

    monkeypatch.setattr(stream, "decode_wal_frame", boom)
    server = _serve([_good_txn_body()])
    s = WalStream("127.0.0.1", server.server_port, 0, name="t")
    try:
        with gevent.Timeout(5):
            with pytest.raises(StreamFailed) as info:
                s.get()
            assert isinstance(info.value.__cause__, RuntimeError)
            with pytest.raises(StreamFailed):  # iteration too, and it stays failed
                list(s)
    finally:
        s.close()
        server.stop()
