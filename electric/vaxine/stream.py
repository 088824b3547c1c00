"""Client of Vaxine's WAL replication stream (port 8088): one per consumer of the log.

``WalStream(host, port, start_offset)`` runs a reader greenlet that connects, asks for the
transactions after ``start_offset`` (``0`` = from the beginning, ``"eof"`` = only new
ones, or the ``(L, R)`` offset of the last transaction the consumer processed), rebuilds
each ``vx_wal_txn`` into a :class:`~electric.changes.Transaction` and puts
``(transaction, (L, R))`` into a bounded queue. When the queue is full the reader stops
reading the socket, so TCP back-pressure reaches the server; nothing grows without bound.

If the connection drops, the reader reconnects with capped exponential back-off and resumes
after the last transaction it queued, dropping anything at or before that offset, so the
consumer sees no duplicate and no gap. (With ``"eof"``, commits made while no connection
had yet delivered a first transaction cannot be recovered: there is no position to resume
from. Consumers that need exactness start from an offset.)

A transaction the reader cannot materialise (:class:`~electric.vaxine.rows.
UnreadableTransaction`) is never skipped: the reader stops right before it, logs one ERROR
naming its offset and object, shows it in :func:`blocked_readers` (``/api/status``) and the
metrics, and re-reads it with a back-off (1 s doubling to 30 s) until it reads, e.g. once the
server's state has caught up or Electric has been fixed.

Offsets are :class:`~electric.vaxine.offset.VaxineOffset` (a ``NamedTuple`` ``(L, R)``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import gevent
from gevent import socket
from gevent.queue import Empty, Queue
from loguru import logger

from electric import metrics
from electric.changes import Transaction
from electric.limits import DEFAULT, VaxineLimits
from electric.retry import Backoff, Policy
from electric.vaxine import etf, rows
from electric.vaxine.framing import FrameDecoder, encode_frame
from electric.vaxine.memo import EncodingMemo
from electric.vaxine.offset import StartOffset, VaxineOffset, describe_start
from electric.vaxine.walproto import VX_WAL_TXN, ClientSession, StreamProtocolError, decode_txn

_CLOSED = object()
_FAILED = object()  # queued when the reader greenlet died of an unexpected exception


def _blocked_backoff(limits: VaxineLimits) -> Backoff:
    """Re-reading a transaction that could not be read (see VaxineLimits)."""
    return Backoff(Policy(limits.stream_blocked_retry_min_s, limits.stream_blocked_retry_max_s))

log = logger.bind(origin="vaxine_stream")

# Every reader currently stopped at an unreadable transaction: id(stream) -> its report.
_blocked: dict[int, dict[str, Any]] = {}


def blocked_readers() -> list[dict[str, Any]]:
    """Readers of the log stopped at a transaction they cannot read (for /api/status)."""
    return [dict(report) for report in _blocked.values()]


class StreamClosed(Exception):
    """The stream was closed; no more transactions will come."""


class StreamFailed(RuntimeError):
    """The reader greenlet stopped on an unexpected exception (its ``__cause__``).

    Raised by :meth:`WalStream.get` and iteration so the consumer learns of it (and can
    reopen) instead of waiting forever on a queue nobody fills.
    """


# --------------------------------------------------------------------------- sans-I/O


class _DecodeCache:
    """Recently decoded frames, shared by every stream of the process.

    All consumers tailing the log receive byte-identical frames for each transaction;
    decoding (pure Python) dominates their cost, so it is done once per frame. Callers get
    their own Transaction object (change records are immutable and shared).
    """

    def __init__(self, size: int = DEFAULT.vaxine.stream_decoded_frames):
        self.size = size
        self._entries: OrderedDict[bytes, tuple[Transaction | None, VaxineOffset]] = OrderedDict()

    def get(self, body: bytes) -> tuple[Transaction | None, VaxineOffset] | None:
        hit = self._entries.get(body)
        if hit is not None:
            self._entries.move_to_end(body)
        return hit

    def put(self, body: bytes, value: tuple[Transaction | None, VaxineOffset]) -> None:
        self._entries[body] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)


_decoded = _DecodeCache()


def decode_wal_frame(body: bytes, memo: EncodingMemo | None = None,
                     ) -> tuple[Any, Transaction | None, VaxineOffset] | None:
    """Frame body → (term or None, transaction or None, offset); ``None`` if not a txn.

    Raises :class:`StreamProtocolError` for anything that is not ``vx_wal_txn``. ``memo``:
    see :func:`~electric.vaxine.walproto.decode_txn`.
    """
    hit = _decoded.get(body)
    if hit is not None:
        tx, offset = hit
        return None, (None if tx is None else replace(tx, changes=list(tx.changes))), offset
    txid, dc_id, offset, ops = decode_txn(body, memo)
    term = (VX_WAL_TXN, txid, dc_id, offset, ops)
    tx = rows.transaction_from_wal(term)
    _decoded.put(body, (tx, offset))
    return term, (None if tx is None else replace(tx, changes=list(tx.changes))), offset


# --------------------------------------------------------------------------- client


class WalStream:
    def __init__(self, host: str, port: int, start_offset: StartOffset = 0,
                 connect_timeout_ms: int | None = None, buffer_size: int | None = None,
                 min_backoff_s: float = 0.1, max_backoff_s: float = 5.0, name: str = "wal",
                 memo: EncodingMemo | None = None, limits: VaxineLimits = DEFAULT.vaxine):
        self.host = host
        self.limits = limits
        if connect_timeout_ms is None:
            connect_timeout_ms = limits.connect_timeout_ms
        self.port = port
        self.session = ClientSession(start_offset)
        self.connect_timeout_ms = connect_timeout_ms
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.log = log.bind(stream=name)
        self.connected = False
        self.reconnects = 0
        self.name = name
        # The memo of an embedded Vaxine in this same process (benchmarks): its commits are
        # taken from it instead of being decoded again.
        self.memo = memo
        # Set while stopped at an unreadable transaction: offset, key, reason, since, attempts.
        self.blocked: dict[str, Any] | None = None
        self._queue: Queue = Queue(
            maxsize=limits.stream_buffer if buffer_size is None else buffer_size)
        self._sock = None
        self._closed = False
        self._was_streaming = False
        self._failure: BaseException | None = None
        self._reader = gevent.spawn(self._run)

    # ------------------------------------------------------------------ consumer side

    def get(self, timeout: float | None = None) -> tuple[Transaction, VaxineOffset]:
        """Next ``(transaction, offset)``; raises ``gevent.queue.Empty`` on timeout and
        :class:`StreamClosed` once closed."""
        if self._closed and self._queue.empty():
            raise StreamClosed()
        item = self._queue.get(timeout=timeout)
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # wake any other getter too
            raise StreamClosed()
        if item is _FAILED:
            self._queue.put_nowait(_FAILED)
            raise StreamFailed(f"replication stream reader stopped: {self._failure!r}") from (
                self._failure
            )
        return item

    def __iter__(self) -> Iterator[tuple[Transaction, VaxineOffset]]:
        while True:
            try:
                yield self.get()
            except StreamClosed:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unblock()
        self._reader.kill()
        self._drop_socket()
        while True:  # nobody will read what is buffered; make room for the wake-up
            try:
                self._queue.get_nowait()
            except Empty:
                break
        self._queue.put_nowait(_CLOSED)

    # ------------------------------------------------------------------ reader greenlet

    def _run(self) -> None:
        """Reader greenlet: whatever ends it, a waiting consumer is woken."""
        try:
            self._run_loop()
        except gevent.GreenletExit:
            raise
        except BaseException as exc:  # a bug, not a network condition: tell the consumer
            self._failure = exc
            self.log.opt(exception=exc).error(
                f"replication stream reader from {self.host}:{self.port} stopped: {exc!r}"
            )
        finally:
            self.connected = False
            self._drop_socket()
            if not self._closed:  # close() queues its own wake-up
                # Blocking put: a full buffer is drained by the consumer first, then it
                # reaches the marker (no transaction already read is lost).
                self._queue.put(_FAILED if self._failure is not None else _CLOSED)

    def _run_loop(self) -> None:
        backoff = Backoff(Policy(self.min_backoff_s, self.max_backoff_s))
        blocked_backoff = _blocked_backoff(self.limits)
        while not self._closed:
            reason = None
            try:
                self._stream_once()
                self.log.warning("Vaxine closed the replication stream; reconnecting")
            except rows.UnreadableTransaction as exc:
                # Stop before it (the session has not moved past it) and read it again later.
                if self._block(exc):
                    blocked_backoff.reset()  # a new one: start over
                self.connected = False
                self._drop_socket()
                gevent.sleep(blocked_backoff.next())
                self.reconnects += 1
                continue
            except (OSError, etf.ETFError, StreamProtocolError, ValueError) as exc:
                reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) \
                    else f"{type(exc).__name__}: {exc}"
            finally:
                self.connected = False
                self._drop_socket()
            if self._was_streaming:  # it delivered: a new outage, not the same one
                backoff.reset()
            delay = backoff.next()
            if reason is not None:
                self.log.warning(f"Vaxine replication stream from {self.host}:{self.port} "
                                 f"interrupted ({reason}); retrying in {delay:g} s")
            gevent.sleep(delay)
            self.reconnects += 1

    def _decode_in_place(self, body: bytes, exc: rows.UnreadableTransaction) -> tuple:
        backoff = _blocked_backoff(self.limits)
        while True:
            self._block(exc)
            gevent.sleep(backoff.next())
            try:
                return decode_wal_frame(body, self.memo)
            except rows.UnreadableTransaction as again:
                exc = again

    def _block(self, exc: rows.UnreadableTransaction) -> bool:
        """Record (and on the first attempt, report) being held at ``exc``'s transaction;
        ``True`` when it is a different transaction than the one held at before."""
        offset = list(exc.offset) if isinstance(exc.offset, tuple | list) else exc.offset
        key = exc.key.decode("utf-8", "replace") if exc.key is not None else None
        if self.blocked is not None and self.blocked["offset"] == offset:
            self.blocked["attempts"] += 1
            self.log.debug(f"log transaction at {offset} still unreadable "
                           f"(attempt {self.blocked['attempts']}): {exc.reason}")
            return False
        self._unblock()
        self.blocked = {"reader": self.name, "offset": offset, "key": key,
                        "reason": exc.reason, "since": time.time(), "attempts": 1}
        _blocked[id(self)] = self.blocked
        metrics.log_reader_blocked(self.name, True)
        self.log.error(
            f"log transaction at offset {offset} (object {key}) cannot be read: {exc.reason}; "
            f"this {self.name} reader is held at it (nothing after it is delivered) and "
            f"re-reads it, at most every {self.limits.stream_blocked_retry_max_s:.0f}s"
        )
        return True

    def _unblock(self) -> None:
        if self.blocked is None:
            return
        report, self.blocked = self.blocked, None
        _blocked.pop(id(self), None)
        metrics.log_reader_blocked(self.name, False)
        if not self._closed:
            self.log.info(f"log transaction at offset {report['offset']} read after "
                          f"{report['attempts']} failed attempt(s); {self.name} reader moves on")

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _stream_once(self) -> None:
        self._was_streaming = False
        sock = socket.create_connection((self.host, self.port),
                                        timeout=self.connect_timeout_ms / 1000)
        self._sock = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        resume = self.session.resume_point
        sock.sendall(encode_frame(self.session.connect()))
        decoder = FrameDecoder(max_frame=self.limits.stream_max_frame)
        started = False
        while True:
            data = sock.recv(256 * 1024)
            if not data:
                return
            for body in decoder.feed(data):
                if not started:
                    sock.settimeout(None)  # an idle log is silent for as long as it likes
                    self.session.on_start_reply(body)
                    started = self.connected = self._was_streaming = True
                    self.log.info(f"replication stream started {describe_start(resume)}")
                    continue
                self._on_frame(body)

    def _on_frame(self, body: bytes) -> None:
        try:
            _term, tx, offset = decode_wal_frame(body, self.memo)
        except rows.UnreadableTransaction as exc:
            if self.session.last is not None:
                raise  # _run_loop re-reads it from the log, resuming after session.last
            # Started at "eof" and nothing delivered yet: there is no position to resume
            # from, so hold this connection (unread: back-pressure) and retry in place.
            _term, tx, offset = self._decode_in_place(body, exc)
        # Accepted before a possibly blocking put: if the connection dies meanwhile, the
        # transaction is already ours and the reconnect resumes after it.
        if not self.session.accept(offset):
            return  # already delivered (resume overlap)
        if self.blocked is not None:
            self._unblock()
        if tx is not None:
            self._queue.put((tx, offset))
