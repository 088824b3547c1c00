"""Client side of the Antidote API (port 8087): connections, a shared pool, transactions.

Every writer in Electric (each Postgres connector, each Satellite session) shares one
:class:`VaxinePool`. A connection carries one request at a time; a connection that failed
mid-request (socket error, timeout, garbage) is closed and never reused, and the next
checkout opens a fresh one. Requests are never resent by the pool: a failed transaction is
aborted (best effort) and the caller decides whether to retry the whole transaction, so a
request is never applied twice behind the caller's back.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from gevent import select, socket
from gevent.lock import BoundedSemaphore
from gevent.queue import Empty, LifoQueue
from google.protobuf.message import Message
from loguru import logger

from electric.limits import DEFAULT, VaxineLimits
from electric.pb import antidote_pb2 as pb
from electric.vaxine import antidote
from electric.vaxine.antidote import VaxineError
from electric.vaxine.framing import encode_frame

log = logger.bind(origin="vaxine_pool")


class VaxineConnectionError(VaxineError):
    """The connection failed (refused, closed, timed out, sent garbage). Safe to retry."""


class PoolTimeout(VaxineError):
    """No connection became free within the checkout timeout."""


class AntidoteConnection:
    """One connection to the API port. Not shared between greenlets."""

    def __init__(self, host: str, port: int, connect_timeout_ms: int | None = None,
                 request_timeout_s: float | None = None,
                 limits: VaxineLimits = DEFAULT.vaxine):
        self.host = host
        self.port = port
        self.limits = limits
        if connect_timeout_ms is None:
            connect_timeout_ms = limits.connect_timeout_ms
        if request_timeout_s is None:
            request_timeout_s = limits.request_timeout_s
        self.request_timeout_s = request_timeout_s
        self.broken = False
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout_ms / 1000)
        except OSError as exc:
            raise VaxineConnectionError(f"cannot connect to Vaxine at {host}:{port}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(request_timeout_s)

    # ------------------------------------------------------------------ raw requests

    def request(self, message: Message) -> Message:
        """Send one request and return its response message (ApbErrorResp included)."""
        return self.request_body(antidote.encode_body(message))

    def request_body(self, body: bytes) -> Message:
        """Like :meth:`request` for an already encoded frame body (code byte + protobuf)."""
        if self.broken:
            raise VaxineConnectionError("connection is broken")
        try:
            self.sock.sendall(encode_frame(body))
            header = self._recv_exact(4)
            (length,) = struct.unpack(">I", header)
            if length > self.limits.max_frame:
                raise VaxineConnectionError(f"response frame of {length} bytes over the limit")
            return antidote.decode_body(self._recv_exact(length))
        except (OSError, antidote.AntidoteDecodeError) as exc:
            self._break()
            raise VaxineConnectionError(f"Vaxine request failed: {exc!r}") from exc
        except BaseException:
            # Interrupted mid-request (e.g. greenlet killed): the stream is out of step.
            self._break()
            raise

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise ConnectionResetError(errno.ECONNRESET, "Vaxine closed the connection")
            got += k
        return bytes(buf)

    def call(self, message: Message, expected: type[Message]) -> Message:
        return antidote.check_response(self.request(message), expected)

    def is_alive(self) -> bool:
        """Cheap check for an idle connection: closed or unexpectedly readable → dead."""
        if self.broken:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        # An idle connection has nothing to read; readable means EOF or stray bytes.
        return not readable

    def _break(self) -> None:
        self.broken = True
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------------ API calls

    def start_transaction(self, timestamp: bytes | None = antidote.IGNORE) -> bytes:
        resp = self.call(antidote.start_transaction(timestamp), pb.ApbStartTransactionResp)
        return resp.transaction_descriptor

    def update_objects(self, descriptor: bytes, ops: list[pb.ApbUpdateOp] | list[bytes]) -> None:
        """``ops`` as messages or already serialized ``ApbUpdateOp`` bytes."""
        if ops and isinstance(ops[0], bytes):
            reply = self.request_body(antidote.raw_update_objects_body(descriptor, ops))
        else:
            reply = self.request(antidote.update_objects(descriptor, ops))
        antidote.check_response(reply, pb.ApbOperationResp)

    def read_objects(self, descriptor: bytes, objects: list[pb.ApbBoundObject]):
        return list(self.call(antidote.read_objects(descriptor, objects),
                              pb.ApbReadObjectsResp).objects)

    def commit(self, descriptor: bytes) -> bytes:
        """Commit; returns the commit clock (``term_to_binary(#{DcId => Micros})``)."""
        return self.call(antidote.commit_transaction(descriptor), pb.ApbCommitResp).commit_time

    def abort(self, descriptor: bytes) -> None:
        self.call(antidote.abort_transaction(descriptor), pb.ApbOperationResp)

    def static_update(self, ops: list[pb.ApbUpdateOp] | list[bytes]) -> bytes:
        """One-request transaction (start + updates + commit); returns the commit clock."""
        if ops and isinstance(ops[0], bytes):
            reply = self.request_body(antidote.raw_static_update_body(ops))
        else:
            reply = self.request(antidote.static_update(ops))
        return antidote.check_response(reply, pb.ApbCommitResp).commit_time

    def static_read(self, objects: list[pb.ApbBoundObject]):
        resp = self.call(antidote.static_read(objects), pb.ApbStaticReadObjectsResp)
        return list(resp.objects.objects), resp.committime.commit_time


class VaxineTransaction:
    """An interactive transaction on a checked-out connection (see :meth:`VaxinePool.transaction`)."""

    def __init__(self, conn: AntidoteConnection, descriptor: bytes):
        self.conn = conn
        self.descriptor = descriptor
        self.done = False

    def update(self, ops: list[pb.ApbUpdateOp] | list[bytes]) -> None:
        self.conn.update_objects(self.descriptor, ops)

    def read(self, objects: list[pb.ApbBoundObject]) -> list[pb.ApbReadObjectResp]:
        return self.conn.read_objects(self.descriptor, objects)

    def commit(self) -> bytes:
        self.done = True
        return self.conn.commit(self.descriptor)

    def abort(self) -> None:
        """Best effort: a broken connection loses the transaction on the server anyway."""
        if self.done:
            return
        self.done = True
        if self.conn.broken:
            return
        try:
            self.conn.abort(self.descriptor)
        except VaxineError as exc:
            log.warning(f"abort of a failed Vaxine transaction did not go through: {exc}")


class VaxinePool:
    """Fixed-size pool of API connections, opened lazily and replaced when they break."""

    def __init__(self, host: str, port: int, size: int | None = None,
                 connect_timeout_ms: int | None = None,
                 checkout_timeout_s: float | None = None,
                 request_timeout_s: float | None = None,
                 limits: VaxineLimits = DEFAULT.vaxine):
        """``None`` arguments take their value from ``limits``."""
        self.limits = limits
        size = limits.pool_size if size is None else size
        connect_timeout_ms = (limits.connect_timeout_ms if connect_timeout_ms is None
                              else connect_timeout_ms)
        checkout_timeout_s = (limits.checkout_timeout_s if checkout_timeout_s is None
                              else checkout_timeout_s)
        request_timeout_s = (limits.request_timeout_s if request_timeout_s is None
                             else request_timeout_s)
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.host = host
        self.port = port
        self.size = size
        self.connect_timeout_ms = connect_timeout_ms
        self.checkout_timeout_s = checkout_timeout_s
        self.request_timeout_s = request_timeout_s
        self._slots = BoundedSemaphore(size)
        self._idle: LifoQueue = LifoQueue()
        self._closed = False
        self.opened = 0  # connections opened over the pool's life (replacements included)

    def _new_connection(self) -> AntidoteConnection:
        conn = AntidoteConnection(self.host, self.port, self.connect_timeout_ms,
                                  self.request_timeout_s, self.limits)
        self.opened += 1
        return conn

    @contextmanager
    def connection(self) -> Iterator[AntidoteConnection]:
        """Check out a connection for a sequence of requests."""
        if self._closed:
            raise VaxineError("Vaxine pool is closed")
        if not self._slots.acquire(timeout=self.checkout_timeout_s):
            raise PoolTimeout(f"no Vaxine connection free within {self.checkout_timeout_s}s "
                              f"(pool size {self.size})")
        conn = None
        try:
            while conn is None:
                try:
                    candidate = self._idle.get_nowait()
                except Empty:
                    conn = self._new_connection()
                    break
                if candidate.is_alive():
                    conn = candidate
                else:
                    candidate.close()
            yield conn
        finally:
            if conn is not None:
                if conn.broken or self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
            self._slots.release()

    @contextmanager
    def transaction(self) -> Iterator[VaxineTransaction]:
        """Start an interactive transaction; aborted unless committed inside the block.

        Any exception inside the block aborts the transaction and propagates.
        """
        with self.connection() as conn:
            txn = VaxineTransaction(conn, conn.start_transaction())
            try:
                yield txn
            except BaseException:
                txn.abort()
                raise
            if not txn.done:
                txn.abort()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except Empty:
                return
