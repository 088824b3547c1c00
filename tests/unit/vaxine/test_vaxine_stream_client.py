"""WalStream against a scripted loopback server: bad transactions and reader failures."""

from dataclasses import replace

import gevent
import pytest
from gevent.server import StreamServer

from electric.limits import DEFAULT
from electric.vaxine import etf, stream
from electric.vaxine.etf import Atom
from electric.vaxine.framing import FrameDecoder, encode_frame
from electric.vaxine.rows import METADATA_KEY
from electric.vaxine.stream import StreamFailed, WalStream
from electric.vaxine.walproto import START_RES, VX_SRV_RES, VX_WAL_TXN
from tests.fixtures.vaxine.golden import frames
from tests.support.waiting import wait_until

FAST_RETRY = replace(DEFAULT.vaxine, stream_blocked_retry_min_s=0.05)


@pytest.fixture(autouse=True)
def _fresh_decode_cache():
    # The decode cache is process-wide; keep other tests' first decode a real one.
    stream._decoded._entries.clear()
    yield
    stream._decoded._entries.clear()


def _good_txn_body() -> bytes:
    body = [f for f in frames("s7_replication", 8088) if f["seq"] == 4][0]["hex"]
    return bytes.fromhex(body)  # a real transaction at offset (0, 4949)


def _good_later_txn_body(r) -> bytes:
    """A readable transaction at offset (0, r) (the real one, renumbered)."""
    term = etf.decode(_good_txn_body())
    return etf.encode(term[:3] + ((0, r),) + term[4:])


def _malformed_txn_body(offset) -> bytes:
    # A metadata:0 object whose effect is a map, not a list: reading it raises KeyError.
    ops = [((METADATA_KEY, b"bucket"), Atom("antidote_crdt_map_rr"), [], [{}])]
    return etf.encode((VX_WAL_TXN, 1, Atom("dc"), offset, ops))


def _serve(bodies, later=None):
    """A scripted stream server: the first connection gets ``bodies``, later ones ``later``
    (default: the same) after the transaction the client asked to resume from."""
    connections = []

    def handle(sock, _addr):
        decoder = FrameDecoder()
        request = []
        while not request:
            data = sock.recv(65536)
            if not data:
                return
            request = decoder.feed(data)
        req = etf.decode(request[0])
        ref = req[1]
        connections.append(req[2][1][0][1])  # the start offset asked for
        sock.sendall(encode_frame(etf.encode((VX_SRV_RES, ref, (START_RES, ref)))))
        for body in bodies if len(connections) == 1 or later is None else later:
            sock.sendall(encode_frame(body))
        gevent.sleep(30)  # keep the connection open: an idle log

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    server.connections = connections
    return server


def test_unreadable_transaction_holds_the_reader_until_it_reads():
    """Never skipped: the reader stops at it (ERROR, status, metric), re-reads it with a
    back-off, and delivers it once it reads; nothing after it overtakes it."""
    from electric import metrics

    good = _good_txn_body()  # offset (0, 4949)
    bad = _malformed_txn_body((0, 4949))
    server = _serve([_good_later_txn_body(1), bad, good], later=[good])
    blocks = metrics.log_reader_blocks.labels("t")._value.get()
    s = WalStream("127.0.0.1", server.server_port, 0, name="t", limits=FAST_RETRY)
    try:
        with gevent.Timeout(5):
            _tx, first = s.get()
            assert first == (0, 1)
            wait_until(lambda: s.blocked is not None, 5, "the reader blocked", step=0.01)
        assert s.blocked["offset"] == [0, 4949] and s.blocked["key"] == "metadata:0"
        assert [r["offset"] for r in stream.blocked_readers()] == [[0, 4949]]
        assert metrics.log_reader_blocks.labels("t")._value.get() == blocks + 1
        assert metrics.log_readers_blocked.labels("t")._value.get() == 1
        with gevent.Timeout(5):  # re-read from (0, 1): now it reads
            tx, offset = s.get()
        assert offset == (0, 4949) and tx.changes
        assert server.connections[1:] and all(c == (0, 1) for c in server.connections[1:])
        assert s.blocked is None and stream.blocked_readers() == []
        assert metrics.log_readers_blocked.labels("t")._value.get() == 0
    finally:
        s.close()
        server.stop()


def test_unreadable_first_transaction_of_an_eof_stream_is_held_in_place():
    server = _serve([_malformed_txn_body((0, 100)), _good_txn_body()])
    s = WalStream("127.0.0.1", server.server_port, "eof", name="t", limits=FAST_RETRY)
    try:
        wait_until(lambda: s.blocked is not None and s.blocked["attempts"] >= 2, 5,
                   "two attempts at the unreadable transaction", step=0.01)
        assert s._queue.empty()  # the later transaction did not overtake it
        assert server.connections == [Atom("eof")]  # held on its connection
    finally:
        s.close()
        server.stop()
    assert stream.blocked_readers() == []


def test_reader_dying_wakes_the_consumer(monkeypatch):
    def boom(_body, _memo=None):
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


def test_lost_row_frame_is_delivered_through_the_stream_client():
    """The frame a Vaxine sends when its stream runs ahead of its state (the row's state
    empty, its effects complete) reaches the consumer with the row, over a real socket."""
    from electric.vaxine import crdt_terms

    term = etf.decode(_good_txn_body())
    ops = [((key, bucket), ctype,
            crdt_terms.to_term(crdt_terms.MAP_RR, {}) if key.startswith(b"rows:") else state, effects)
           for (key, bucket), ctype, state, effects in term[4]]
    lost = etf.encode(term[:4] + (ops,))
    server = _serve([lost])
    s = WalStream("127.0.0.1", server.server_port, 0, name="t")
    try:
        with gevent.Timeout(5):
            tx, offset = s.get()
        stream._decoded._entries.clear()
        expected, _ = stream.decode_wal_frame(_good_txn_body())[1:]
        assert offset == (0, 4949) and tx.changes == expected.changes
        assert tx.changes[0].record["id"]
    finally:
        s.close()
        server.stop()
