"""Writing to one Satellite socket: the outgoing half of a connection (a mixin of
``connection.Connection``), kept apart because it is what decides who waits for whom.

A frame is written straight to the socket (non-blocking) when nothing is queued before it:
the common case, one syscall, no greenlet switch. Frames the shared tail hands over are
written when the tail next waits, several transactions in one syscall per socket. What the
kernel does not take is queued and written by a sender greenlet that exists only until the
queue is empty; frames produced meanwhile join the queue and leave in one syscall. A
producer that is this socket's own greenlet waits when more than max_out_buffer (limits) is queued
(back-pressure); the shared tail never waits: past slow_client_bytes (limits) the client is
disconnected (CLOSE_TOO_SLOW) and resumes from its lsn when it reconnects. A peer that
accepts no bytes for send_timeout (limits) is cut off.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent
import gevent.socket
from gevent.event import Event

from electric import metrics
from electric.satellite import websocket

# A client that fell too far behind is closed with "Try Again Later": it reconnects and
# resumes from its lsn.
CLOSE_TOO_SLOW = websocket.CLOSE_TRY_AGAIN_LATER


class _SendTimeout(Exception):
    pass


class SocketWriter:
    """Needs from the connection: ``server`` (limits, slow_disconnects, _flush_later),
    ``frames``, ``log``, ``greenlets``, ``closing``, and the attributes set in
    :meth:`_init_writer`."""

    server: Any
    frames: Any  # the connection's websocket.FrameReader
    log: Any
    greenlets: list
    closing: bool

    _direct_depth = 0  # > 0 while the shared tail is handing this socket a transaction
    _flush_due = False

    def _init_writer(self, sock: Any) -> None:
        self.sock = sock
        self.out: list[bytes] = []
        self.out_bytes = 0
        self._partial: bytes | None = None  # out[0] when it is the rest of a started frame
        self._drained: Event | None = None
        self.send_failed = False
        self.sender: gevent.Greenlet | None = None
        # The plain socket for non-blocking writes; TLS goes through the sender greenlet.
        self._raw = getattr(sock, "_sock", None) if type(sock) is gevent.socket.socket else None

    def _send(self, data: bytes) -> None:
        if self.closing:
            return
        self._write_frame(websocket.binary_frame(data))
        if self._direct_depth:  # the shared tail: never waits
            if self.out_bytes > self.server.limits.slow_client_bytes:
                self._too_slow()
            return
        if self.out_bytes > self.server.limits.max_out_buffer and gevent.getcurrent() is not self.sender:
            if self._drained is None:
                self._drained = Event()
            self._drained.clear()
            self._drained.wait()

    def queue_pong(self, payload: bytes) -> None:
        """Called by the websocket reader for a ping: the pong joins the ordered stream."""
        self._write_frame(websocket.frame(websocket.PONG, payload))

    def _write_frame(self, frame: bytes) -> None:
        if self.send_failed:
            return
        if self._direct_depth and self._raw is not None:
            # From the shared tail: written when the tail next waits, together with the
            # transactions it hands over before then (one syscall per socket per batch).
            self.out.append(frame)
            self.out_bytes += len(frame)
            if self.sender is None and not self._flush_due:
                self._flush_due = True
                self.server._flush_later(self)
            return
        if not self.out and self._raw is not None:
            try:
                n = self._raw.send(frame)
            except BlockingIOError:
                n = 0
            except OSError:
                self._fail_sending()
                return
            if n == len(frame):
                return
            if n:
                frame = frame[n:]
                self._partial = frame
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.sender is None and not self._flush_due:
            self.sender = gevent.spawn(self._sender_loop)

    def _flush(self) -> None:
        """Write what the tail queued (see _write_frame) in one non-blocking send; what the
        kernel does not take goes to the sender greenlet."""
        self._flush_due = False
        if self.sender is not None or not self.out or self.send_failed:
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        try:
            n = self._raw.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._fail_sending()
            return
        if n == len(data):
            self.out, self.out_bytes, self._partial = [], 0, None
            return
        rest = data[n:] if n else data
        self.out, self.out_bytes = [rest], len(rest)
        self._partial = rest if n else None
        self.sender = gevent.spawn(self._sender_loop)

    def _too_slow(self) -> None:
        """The client has slow_client_bytes (limits) of live transactions it does not read: drop
        them (it resumes from its lsn), keep a started frame whole, and close."""
        unsent = self.out_bytes
        keep = [self._partial] if self.out and self.out[0] is self._partial else []
        self.out[:] = keep
        self.out_bytes = sum(map(len, keep))
        metrics.slow_client_disconnected()
        self.server.slow_disconnects += 1
        self.log.warning("client is not reading: {} bytes of transactions unsent, "
                         "disconnecting it (it resumes from its lsn)", unsent)
        self._close(CLOSE_TOO_SLOW, "client too slow: reconnect and resume from your lsn")

    def _sender_loop(self) -> None:
        try:
            while self.out:
                chunks, self.out, self.out_bytes = self.out, [], 0
                self._partial = None
                if self._drained is not None:
                    self._drained.set()
                with gevent.Timeout(self.server.limits.send_timeout, _SendTimeout):
                    self.sock.sendall(b"".join(chunks))
        except gevent.GreenletExit:
            raise
        except _SendTimeout:
            self.log.info("client stopped reading for {}s, disconnecting", self.server.limits.send_timeout)
            self._fail_sending()
        except Exception:
            self._fail_sending()
        finally:
            if self.sender is gevent.getcurrent():
                self.sender = None

    def _fail_sending(self) -> None:
        self.send_failed = True
        self.closing = True
        self.out.clear()
        self.out_bytes = 0
        if self._drained is not None:
            self._drained.set()
        self._cut()

    def _close(self, code: int | None, reason: str, level: str = "INFO") -> None:
        if self.closing:
            return
        self.log.log(level, "closing connection: {}", reason or "done")
        self._write_frame(websocket.close_frame(code, reason))
        self.frames.sent_close()
        self.closing = True
        # Cut the socket if the peer never answers our close.
        self.greenlets.append(gevent.spawn_later(self.server.limits.close_grace, self._cut))

    def _cut(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
