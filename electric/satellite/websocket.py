"""RFC 6455 websocket, server side, sans-I/O: the opening handshake and the frame codec.

Bytes in, events out (:class:`FrameReader`); events in, bytes out (:func:`frame`,
:func:`close_frame`); a request head in, the reply out (:func:`handshake`). Nothing here
reads, writes, sleeps or logs: ``connection.py`` does the I/O around it (docs/protocols.md
§1.1, §1.2).

Why our own codec and not wsproto. wsproto is the obvious sans-I/O choice, but it could
not keep three of our limits without wrapping its internals, which is what we left
gevent-websocket to stop doing:

* the shared inbound :class:`~electric.limits.ByteBudget` must be reserved when a frame
  header announces a payload, before the payload is read; wsproto only reports payload
  after it has buffered it, and has no per-message size limit (we close with 1009 on the
  header of a frame that would make the message larger than ``max_message_bytes``);
* text frames are not UTF-8-validated here: the Satellite protocol is binary, the session
  answers any text message with ``SatErrorResp{INVALID_REQUEST}`` and close 1003, as the
  reference does; wsproto would close with 1007 before the session could answer;
* the reader must tell the socket how many bytes it needs next, so an idle socket waits
  for 2 header bytes in its small read buffer and a big payload is read straight into its
  message (memory per socket matters at 10,000 sockets).

The codec is small: a frame header, masking, fragmentation, the control frames, the close
handshake. Anything the RFC forbids ends the connection with a :class:`Failure` carrying the
close code to send (1002 protocol error, 1007 invalid close reason, 1009 too big, 1013 no
memory budget left) and the reader yields nothing after it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from electric.limits import ByteBudget

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
_DATA = (CONTINUATION, TEXT, BINARY)
_CONTROL = (CLOSE, PING, PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# 13 is RFC 6455; 8 and 7 are the last drafts, with the same framing (accepted as before).
SUPPORTED_VERSIONS = ("13", "8", "7")
MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = 120  # bytes of our own reasons: the close payload must fit in 125


# -- the opening handshake -------------------------------------------------------------------


@dataclass(frozen=True)
class HandshakeReply:
    """The HTTP answer to a request: ``101`` (then the socket speaks websocket) or a refusal."""

    status: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def accepted(self) -> bool:
        return self.status.startswith("101")


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest()).decode()


def _refuse(status: str, message: str, headers: list[tuple[str, str]] | None = None
            ) -> HandshakeReply:
    return HandshakeReply(status, [*(headers or []), ("Content-Type", "text/plain")],
                          message.encode() + b"\n")


def handshake(method: str, path: str, http_version: str, headers: Mapping[str, str],
              ws_path: str = "/ws") -> HandshakeReply:
    """Answer one HTTP request on the websocket port. ``headers`` has lower-case names.

    Only ``ws_path`` upgrades (404 elsewhere); a request there that is not a websocket
    upgrade gets 426. Offered subprotocols and extensions are declined (not echoed)."""
    if path != ws_path:
        return _refuse("404 Not Found", "not found")
    upgrade = headers.get("upgrade", "").lower()
    connection = headers.get("connection", "").lower()
    if method != "GET" or upgrade != "websocket" or "upgrade" not in connection:
        return _refuse("426 Upgrade Required", "websocket upgrade required",
                       [("Connection", "upgrade"), ("Upgrade", "websocket")])
    if http_version != "HTTP/1.1":
        return _refuse("400 Bad Request", "websocket needs HTTP/1.1")
    version = headers.get("sec-websocket-version", "").strip()
    versions = [("Sec-WebSocket-Version", ", ".join(SUPPORTED_VERSIONS))]
    if not version:
        return _refuse("426 Upgrade Required", "no Sec-WebSocket-Version", versions)
    if version not in SUPPORTED_VERSIONS:
        return _refuse("400 Bad Request", f"unsupported websocket version {version[:20]}",
                       versions)
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        return _refuse("400 Bad Request", "missing or invalid Sec-WebSocket-Key")
    return HandshakeReply("101 Switching Protocols", [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key))])


# -- frames we send --------------------------------------------------------------------------


def frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bytes | None = None,
          rsv: int = 0) -> bytes:
    """One frame. The server sends unmasked frames; ``mask`` (4 bytes) builds a client's."""
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode])
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head.append(bit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += n.to_bytes(8, "big")
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + apply_mask(payload, mask)


def binary_frame(payload: bytes) -> bytes:
    """A whole unmasked binary frame around ``payload``."""
    return frame(BINARY, payload)


def close_frame(code: int | None = None, reason: str = "") -> bytes:
    """A close frame; ``code=None`` sends none (nor a reason)."""
    if code is None:
        return frame(CLOSE)
    return frame(CLOSE, code.to_bytes(2, "big")
                 + reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore").encode())


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` (masking and unmasking are the same)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


# -- frames we receive -----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A whole data message (its fragments joined). ``text``: sent as text frames."""

    data: bytes
    text: bool = False


@dataclass(frozen=True)
class Ping:
    payload: bytes


@dataclass(frozen=True)
class Pong:
    payload: bytes


@dataclass(frozen=True)
class CloseReceived:
    """The peer closes: send ``reply`` (its code echoed; empty when we closed first and
    this is the answer to our close), then end."""

    code: int | None
    reason: str
    reply: bytes = b""


@dataclass(frozen=True)
class Failure:
    """The peer broke the protocol or a limit: send ``close_frame(code, reason)`` and end."""

    code: int
    reason: str


Event = Message | Ping | Pong | CloseReceived | Failure


def _valid_close_code(code: int) -> bool:
    # 1004-1006 and 1015 are reserved and never sent; 1016-2999 are unassigned; 3000-4999
    # are for libraries and applications.
    if 1000 <= code <= 1015:
        return code not in (1004, 1005, 1006, 1015)
    return 3000 <= code <= 4999


class FrameReader:
    """Parses the frames a client sends. Feed bytes with :meth:`receive_data`, take events
    from :meth:`events`; read :meth:`wanted` bytes next. After a :class:`Failure` or a
    :class:`CloseReceived` nothing more is parsed. Call :meth:`release` when the connection
    ends (returns what is still reserved in the budget)."""

    __slots__ = ("max_message", "budget", "reserved", "closed", "close_sent", "_buf", "_message",
                 "_message_opcode", "_frame")  # one per socket, 10,000 sockets

    def __init__(self, max_message: int, budget: ByteBudget | None = None) -> None:
        self.max_message = max_message
        self.budget = budget
        self.reserved = 0
        self.closed = False
        self.close_sent = False  # we sent a close: the peer's data is no longer served
        self._buf = bytearray()
        self._message = bytearray()
        self._message_opcode: int | None = None  # TEXT/BINARY while a message is open
        # The frame whose header is parsed and whose payload is awaited.
        self._frame: tuple[bool, int, int, bytes] | None = None  # fin, opcode, length, mask

    def receive_data(self, data: bytes) -> None:
        if not self.closed:
            self._buf += data

    def wanted(self) -> int:
        """How many more bytes complete the next step (header or payload): what to read."""
        buf = self._buf
        if self._frame is not None:
            return max(1, self._frame[2] - len(buf))
        if len(buf) < 2:
            return 2 - len(buf)
        need = 2 + {126: 2, 127: 8}.get(buf[1] & 0x7F, 0) + (4 if buf[1] & 0x80 else 0)
        return max(1, need - len(buf))

    def release(self) -> None:
        if self.budget is not None and self.reserved:
            self.budget.release(self.reserved)
        self.reserved = 0

    def sent_close(self) -> None:
        """We sent a close frame: from now on only the peer's close (or a failure) matters
        (RFC 6455 §5.5.1); its close is the answer to ours and needs none."""
        self.close_sent = True

    def events(self) -> Iterator[Event]:
        while not self.closed:
            event = self._next()
            if event is None:
                return
            if self.close_sent and isinstance(event, Message | Ping | Pong):
                continue
            if isinstance(event, CloseReceived) and not self.close_sent:
                event = CloseReceived(event.code, event.reason, close_frame(event.code))
            if isinstance(event, Failure | CloseReceived):
                self.closed = True
                self._buf.clear()
                self._message = bytearray()
                self.release()
            yield event

    # -- internals ---------------------------------------------------------------------------

    def _next(self) -> Event | None:
        """The next event the buffer completes, or ``None`` (more bytes needed)."""
        while True:
            if self._frame is None:
                failure = self._parse_header()
                if failure is not None:
                    return failure
                if self._frame is None:
                    return None
            fin, opcode, length, mask = self._frame
            if len(self._buf) < length:
                return None
            payload = bytes(self._buf[:length])
            del self._buf[:length]
            self._frame = None
            if mask:
                payload = apply_mask(payload, mask)
            if opcode in _CONTROL:
                return self._control(opcode, payload)
            self._message += payload
            if fin:
                data, text = bytes(self._message), self._message_opcode == TEXT
                self._message = bytearray()
                self._message_opcode = None
                self.release()  # the message is the session's now
                return Message(data, text)

    def _parse_header(self) -> Failure | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        masked, length = bool(b1 & 0x80), b1 & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, pos = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, pos = int.from_bytes(buf[2:10], "big"), 10
            if length >> 63:
                return Failure(CLOSE_PROTOCOL_ERROR, "frame length with the high bit set")
        if masked:
            if len(buf) < pos + 4:
                return None
            mask, pos = bytes(buf[pos:pos + 4]), pos + 4
        else:
            mask = b""
        # The whole header is here: judge it before reading any payload.
        if rsv:
            return Failure(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
        if opcode not in _DATA and opcode not in _CONTROL:
            return Failure(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if not masked:
            return Failure(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        if opcode in _CONTROL:
            if not fin:
                return Failure(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                return Failure(CLOSE_PROTOCOL_ERROR, "control frame longer than 125 bytes")
        else:
            if opcode == CONTINUATION and self._message_opcode is None:
                return Failure(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
            if opcode != CONTINUATION and self._message_opcode is not None:
                return Failure(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if len(self._message) + length > self.max_message:
                return Failure(CLOSE_TOO_BIG,
                               f"message larger than {self.max_message} bytes")
            if self.budget is not None and length:
                if not self.budget.try_reserve(length):
                    return Failure(CLOSE_TRY_AGAIN_LATER,
                                   f"{self.budget.used} bytes of incoming messages are "
                                   f"already in flight (budget {self.budget.capacity} bytes)")
                self.reserved += length
            if opcode != CONTINUATION:
                self._message_opcode = opcode
        del buf[:pos]
        self._frame = (fin, opcode, length, mask)
        return None

    def _control(self, opcode: int, payload: bytes) -> Event:
        if opcode == PING:
            return Ping(payload)
        if opcode == PONG:
            return Pong(payload)
        if not payload:
            return CloseReceived(None, "")
        if len(payload) == 1:
            return Failure(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if not _valid_close_code(code):
            return Failure(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return Failure(CLOSE_INVALID_DATA, "close reason is not UTF-8")
        return CloseReceived(code, reason)
