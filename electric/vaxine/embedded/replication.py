"""The embedded Vaxine's WAL replication endpoint (port 8088): vx_server's protocol.

Per connection: ETF requests in ``{packet, 4}`` frames. ``{vx_cli_req, Ref,
{vx_cli_start_req, Opts}}`` answers ``{vx_srv_res, Ref, {vx_srv_start_res, RepId}}`` and then
pushes one ``{vx_wal_txn, TxId, DcId, {L, R}, Ops}`` per committed transaction, in commit
order, from the requested offset (``0``, ``eof`` or ``{L, R}``: everything with commit
position > R). ``{vx_cli_stop_req, RepId}`` with the right id stops the stream and answers
``{vx_srv_res, Ref, {vx_srv_stop_res}}``; anything else gets a bare ``{error, bad_proto}``
and the connection is closed, as on the real server.

Offsets: both numbers are the transaction's log offset (see
:mod:`electric.vaxine.embedded.engine`; one record is the transaction's start and its commit
at once), so ``L == R``, monotone, and identical across restarts. Only durable transactions
are sent. Back-pressure: the sender blocks in ``sendall``; nothing is queued beyond one read
batch. Live tailing waits on the store's durability event, no polling.
"""

from __future__ import annotations

import itertools
import os
import struct

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from loguru import logger

from electric.vaxine import etf
from electric.vaxine.embedded.store import Store
from electric.vaxine.etf import Atom, Reference
from electric.vaxine.framing import FrameDecoder, FrameTooLarge, encode_frame

VX_CLI_REQ = Atom("vx_cli_req")
VX_SRV_RES = Atom("vx_srv_res")
START_REQ = Atom("vx_cli_start_req")
STOP_REQ = Atom("vx_cli_stop_req")
START_RES = Atom("vx_srv_start_res")
STOP_RES = Atom("vx_srv_stop_res")
OFFSET = Atom("offset")
EOF = Atom("eof")
ERROR = Atom("error")
BAD_PROTO = etf.encode((ERROR, Atom("bad_proto")))

_TXN_PREFIX = b"\x83\x68\x05" + etf.encode_body(Atom("vx_wal_txn"))
# Largest request a replication client sends is ~100 bytes; 1 MiB is generous.
MAX_REQUEST = 1024 * 1024

log = logger.bind(origin="vaxine_replication")


class BadOffset(ValueError):
    pass


def parse_start_offset(opts) -> int | Atom | tuple[int, int]:
    """The ``offset`` option of a start request: ``0``, ``eof`` or ``(L, R)``."""
    if not isinstance(opts, list):
        raise BadOffset("options are not a list")
    offset = 0
    for opt in opts:
        if isinstance(opt, tuple) and len(opt) == 2 and opt[0] == OFFSET:
            offset = opt[1]
    if offset == 0 or offset == EOF:
        return offset
    if (isinstance(offset, tuple) and len(offset) == 2
            and all(type(x) is int and x >= 0 for x in offset) and offset[0] <= offset[1]):
        return offset
    raise BadOffset(f"unsupported offset {offset!r}")


def txn_frame(offset: int, txid_body: bytes, ops_body: bytes, dc_id_body: bytes) -> bytes:
    """The ETF ``{vx_wal_txn, TxId, DcId, {Offset, Offset}, Ops}`` of a logged transaction."""
    return b"".join((_TXN_PREFIX, txid_body, dc_id_body, etf.encode_body((offset, offset)),
                     ops_body))


class _Stream:
    def __init__(self, rep_id: Reference):
        self.rep_id = rep_id
        self.stop = Event()
        self.greenlet = None


class ReplicationConnection:
    _ref_ids = itertools.count(1)

    def __init__(self, store: Store, sock, peer=None):
        self.store = store
        self.sock = sock
        self.peer = peer
        self._send_lock = Semaphore()
        self._stream: _Stream | None = None
        self._dc_id_body = etf.encode_body(store.dc_id)

    def serve(self) -> None:
        decoder = FrameDecoder(max_frame=MAX_REQUEST)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                try:
                    bodies = decoder.feed(data)
                except FrameTooLarge as exc:
                    log.warning(f"replication client {self.peer}: {exc}; closing")
                    return
                for body in bodies:
                    if not self._handle(body):
                        return
        except OSError:
            return
        finally:
            self._stop_stream(kill=True)

    # ------------------------------------------------------------------ requests

    def _send(self, body: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(encode_frame(body))

    def _bad_proto(self, why: str) -> bool:
        log.warning(f"replication client {self.peer}: {why}; replying bad_proto and closing")
        try:
            self._send(BAD_PROTO)
        except OSError:
            pass
        return False

    def _handle(self, body: bytes) -> bool:
        """Process one request; ``False`` means close the connection."""
        try:
            term = etf.decode(body)
        except etf.ETFError as exc:
            return self._bad_proto(f"undecodable request ({exc})")
        if not (isinstance(term, tuple) and len(term) == 3 and term[0] == VX_CLI_REQ
                and isinstance(term[2], tuple) and term[2]):
            return self._bad_proto("unknown request")
        ref, req = term[1], term[2]
        if req[0] == START_REQ and len(req) == 2:
            return self._start(ref, req[1])
        if req[0] == STOP_REQ and len(req) == 2:
            if self._stream is None or req[1] != self._stream.rep_id:
                return self._bad_proto("stop request with an unknown replication id")
            self._stop_stream()
            self._send(etf.encode((VX_SRV_RES, ref, (STOP_RES,))))
            return True
        return self._bad_proto("unknown request")

    def _start(self, ref, opts) -> bool:
        if self._stream is not None:
            # One replication per connection; the real server drops the connection too.
            log.warning(f"replication client {self.peer}: second start on one connection; closing")
            return False
        try:
            offset = parse_start_offset(opts)
        except BadOffset as exc:
            log.warning(f"replication client {self.peer}: {exc}")
            self._send(etf.encode((VX_SRV_RES, ref, (ERROR, Atom("unknown_error")))))
            return False
        if offset == 0:
            after = 0
        elif offset == EOF:
            after = self.store.durable
        else:
            after = offset[1]
        rep_id = Reference(self.store.node, self.store.creation,
                           (next(self._ref_ids), *struct.unpack(">II", os.urandom(8))))
        self._send(etf.encode((VX_SRV_RES, ref, (START_RES, rep_id))))
        stream = self._stream = _Stream(rep_id)
        stream.greenlet = gevent.spawn(self._pump, stream, after)
        return True

    def _stop_stream(self, kill: bool = False) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop.set()
            if kill:  # connection is going away: a half-sent frame no longer matters
                stream.greenlet.kill()
            else:  # let a frame being sent finish so the stop reply stays well-framed
                stream.greenlet.join()

    # ------------------------------------------------------------------ streaming

    def _pump(self, stream: _Stream, after: int) -> None:
        store = self.store
        store.live_streams += 1
        try:
            while not stream.stop.is_set():
                durable = store.durable_event()
                records = store.records_after(after) if after < store.durable else []
                if not records:
                    if store.closed:
                        return
                    gevent.wait([durable, stream.stop], count=1)
                    continue
                for offset, txid_body, ops_body in records:
                    after = offset
                    if stream.stop.is_set():
                        return
                    self._send(txn_frame(offset, txid_body, ops_body, self._dc_id_body))
        except OSError:
            # The client went away; the reader side notices and cleans up.
            try:
                self.sock.shutdown(2)
            except OSError:
                pass
        finally:
            self.store.live_streams -= 1
