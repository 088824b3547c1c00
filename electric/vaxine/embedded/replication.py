"""The embedded Vaxine's WAL replication endpoint (port 8088): the I/O shell of vx_server's
protocol, whose messages and decisions live in :mod:`electric.vaxine.walproto`.

Per connection: requests are read and handed to a :class:`~electric.vaxine.walproto.
ServerSession`; after a start, one ``{vx_wal_txn, TxId, DcId, {L, R}, Ops}`` is pushed per
committed transaction, in commit order, from the requested offset (``0``, ``eof`` or
``{L, R}``: everything with commit position > R).

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

from electric.limits import DEFAULT, VaxineLimits
from electric.vaxine import etf, walproto
from electric.vaxine.embedded.store import Store
from electric.vaxine.etf import Reference
from electric.vaxine.framing import FrameDecoder, FrameTooLarge, encode_frame

log = logger.bind(origin="vaxine_replication")


class _Stream:
    def __init__(self) -> None:
        self.stop = Event()
        self.greenlet = None


class ReplicationConnection:
    _ref_ids = itertools.count(1)

    def __init__(self, store: Store, sock, peer=None, limits: VaxineLimits = DEFAULT.vaxine):
        self.store = store
        self.limits = limits
        self.sock = sock
        self.peer = peer
        self._send_lock = Semaphore()
        self._stream: _Stream | None = None
        self.session = walproto.ServerSession()
        self._dc_id_body = etf.encode_body(store.dc_id)

    def serve(self) -> None:
        decoder = FrameDecoder(max_frame=self.limits.server_max_request)
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

    def _handle(self, body: bytes) -> bool:
        """Process one request; ``False`` means close the connection."""
        action = self.session.handle(body)
        if isinstance(action, walproto.StartStream):
            self._start(action)
            return True
        if isinstance(action, walproto.StopStream):
            self._stop_stream()
            self._send(action.reply)
            return True
        log.warning(f"replication client {self.peer}: {action.reason}")
        if action.reply is not None:
            try:
                self._send(action.reply)
            except OSError:
                pass
        return False

    def _start(self, action: walproto.StartStream) -> None:
        if action.start == 0:
            after = 0
        elif action.start == walproto.EOF:
            after = self.store.durable
        else:
            after = action.start.right
        rep_id = Reference(self.store.node, self.store.creation,
                           (next(self._ref_ids), *struct.unpack(">II", os.urandom(8))))
        self._send(self.session.started(action.ref, rep_id))
        stream = self._stream = _Stream()
        stream.greenlet = gevent.spawn(self._pump, stream, after)

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
                    self._send(walproto.txn_frame(offset, txid_body, ops_body, self._dc_id_body))
        except OSError:
            # The client went away; the reader side notices and cleans up.
            try:
                self.sock.shutdown(2)
            except OSError:
                pass
        finally:
            self.store.live_streams -= 1
