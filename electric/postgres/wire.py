"""Backend (server) side of the Postgres frontend/backend protocol: the connection codec.

This is what Electric speaks on ``POSTGRES_REPLICATION_PORT`` (5433), where stock Postgres
subscribers connect to it as if it were a publishing Postgres (docs/protocols.md §2). No
socket is touched here:

* :class:`BackendConnection` — fed the bytes a client sends, returns typed events
  (:class:`SSLRequest`, :class:`StartupMessage`, :class:`Query`, :class:`StandbyStatusUpdate`,
  :class:`CopyDone`, :class:`Terminate`, …). Anything malformed raises :class:`ProtocolError`
  and nothing else; length fields are checked against a cap *before* any body is buffered, so
  a hostile length cannot make us allocate.
* the framing of messages (``frame``, ``cstring``) and the CopyBothResponse that switches a
  connection to streaming; the frames sent inside that stream are in ``copyboth.py``.

The replies to queries are built in ``replies.py``; the text of a Query is classified by
``commands.py``; what to answer is decided by ``publisher_session.py``. Only the
simple-query protocol is supported: the subscriber never uses anything else.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass
from enum import Enum

from electric.limits import DEFAULT, PostgresLimits

__all__ = [
    "ProtocolError",
    "BackendConnection",
    "Phase",
    "Event",
    "SSLRequest",
    "GSSENCRequest",
    "CancelRequest",
    "StartupMessage",
    "SASLInitialResponse",
    "SASLResponse",
    "Query",
    "CopyData",
    "StandbyStatusUpdate",
    "HotStandbyFeedback",
    "CopyDone",
    "CopyFail",
    "Terminate",
    "UnsupportedMessage",
    "python_encoding",
    "frame",
    "cstring",
    "copy_both_response",
]

# --------------------------------------------------------------------------- constants

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678

_AUTH_TAGS = frozenset(b"pX")  # password messages and Terminate, before authentication

# Every message type byte a frontend can legally send (protocol 3.0).
_FRONTEND_TAGS = frozenset(b"BCdcfDEHFPpQSX")
_TAG_NAMES = {
    ord("B"): "Bind",
    ord("C"): "Close",
    ord("D"): "Describe",
    ord("E"): "Execute",
    ord("H"): "Flush",
    ord("F"): "FunctionCall",
    ord("P"): "Parse",
    ord("p"): "PasswordMessage",
    ord("S"): "Sync",
    ord("Q"): "Query",
    ord("d"): "CopyData",
    ord("c"): "CopyDone",
    ord("f"): "CopyFail",
    ord("X"): "Terminate",
}


class ProtocolError(Exception):
    """The client broke the protocol. The connection must be closed.

    ``sqlstate`` is what to put in the FATAL ErrorResponse sent before closing
    (see :func:`fatal_for`); ``str()`` is a one-line description for the log.
    """

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate




# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class SSLRequest:
    """Answer with :func:`encryption_denied` and keep reading the startup phase, or — when
    the connection was made with ``tls_offered`` — with :func:`encryption_accepted`, run the
    TLS handshake, call :meth:`BackendConnection.tls_established` and feed the decrypted
    bytes from then on."""


@dataclass(frozen=True)
class GSSENCRequest:
    """Answer with :func:`encryption_denied` and keep reading the startup phase."""


@dataclass(frozen=True)
class CancelRequest:
    """Sent on a fresh connection to cancel the query of the backend ``(pid, secret)``."""

    pid: int
    secret: int


@dataclass(frozen=True)
class StartupMessage:
    protocol: tuple[int, int]
    parameters: dict[str, str]


@dataclass(frozen=True)
class SASLInitialResponse:
    """First ``p`` message of a SASL exchange: the chosen mechanism and the client-first
    message (``None`` when the client sent none)."""

    mechanism: str
    data: bytes | None


@dataclass(frozen=True)
class SASLResponse:
    """Later ``p`` messages of a SASL exchange (SCRAM: the client-final message)."""

    data: bytes


@dataclass(frozen=True)
class Query:
    """A simple-protocol query; :func:`parse_command` classifies ``text``."""

    text: str


@dataclass(frozen=True)
class CopyData:
    """CopyData whose payload is not a status update or hot-standby feedback."""

    payload: bytes


@dataclass(frozen=True)
class StandbyStatusUpdate:
    """``r``: the subscriber's written/flushed/applied positions (LSNs as ints)."""

    written: int
    flushed: int
    applied: int
    client_time: int  # Postgres-epoch microseconds
    reply_requested: bool


@dataclass(frozen=True)
class HotStandbyFeedback:
    """``h``: only meaningful for physical standbys; parsed so it can be ignored cleanly."""

    client_time: int
    xmin: int
    xmin_epoch: int
    catalog_xmin: int = 0
    catalog_xmin_epoch: int = 0


@dataclass(frozen=True)
class CopyDone:
    """The client ends CopyBoth: answer CopyDone, CommandComplete(s), ReadyForQuery."""


@dataclass(frozen=True)
class CopyFail:
    message: str


@dataclass(frozen=True)
class Terminate:
    """``X``: the client is going away; close the socket."""


@dataclass(frozen=True)
class UnsupportedMessage:
    """A well-formed frontend message Electric does not handle here (extended protocol,
    FunctionCall, a Query in CopyBoth mode, …). Reply with ``fatal_for`` / close."""

    tag: str
    name: str


Event = (
    SSLRequest
    | GSSENCRequest
    | CancelRequest
    | StartupMessage
    | SASLInitialResponse
    | SASLResponse
    | Query
    | CopyData
    | StandbyStatusUpdate
    | HotStandbyFeedback
    | CopyDone
    | CopyFail
    | Terminate
    | UnsupportedMessage
)


class Phase(Enum):
    STARTUP = "startup"  # untagged packets: SSLRequest, GSSENCRequest, Cancel, Startup
    AUTHENTICATION = "authentication"  # only password (SASL) messages until authenticated()
    QUERY = "query"  # tagged messages, simple query protocol
    COPY_BOTH = "copy_both"  # after CopyBothResponse: CopyData/CopyDone/Terminate
    CLOSED = "closed"  # after Terminate / CancelRequest / a protocol error


# --------------------------------------------------------------------------- connection

_PG_TO_PY_ENCODING = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQL_ASCII": "utf-8",  # no conversion in Postgres; utf-8 is the best guess
    "LATIN1": "latin-1",
    "LATIN9": "iso8859-15",
    "WIN1252": "cp1252",
    "WIN1251": "cp1251",
    "EUC_JP": "euc_jp",
    "SJIS": "shift_jis",
    "KOI8R": "koi8_r",
}


def python_encoding(pg_encoding: str | None) -> str:
    """Python codec for a Postgres ``client_encoding`` name (UTF-8 when unknown)."""
    if not pg_encoding:
        return "utf-8"
    key = pg_encoding.strip().upper().replace("-", "").replace("_", "")
    for name, codec in _PG_TO_PY_ENCODING.items():
        if name.replace("_", "") == key:
            return codec
    try:
        return codecs.lookup(pg_encoding).name
    except LookupError:
        return "utf-8"


class BackendConnection:
    """Protocol state of one client connection, seen from the server.

    ``receive_data(bytes) -> list[Event]``; the caller writes replies built with the
    module's builder functions. The caller tells the machine when it has switched the
    stream into CopyBoth mode (:meth:`start_copy_both`), because from then on ``d``/``c``
    messages are legal and ``Q`` is not.

    ``auth_required``: after the StartupMessage the connection is in the AUTHENTICATION
    phase, where only SASL password messages are legal, until the caller has verified them
    and calls :meth:`authenticated`. Nothing a client pipelines behind its startup packet is
    ever read as a query before that.

    ``tls_offered``: SSLRequest will be accepted. Plaintext bytes pipelined behind the
    SSLRequest are refused (they would be processed as if they had come over TLS), and a
    StartupMessage is only accepted once :meth:`tls_established` has been called (TLS is
    required, like ``hostssl`` in pg_hba.conf).
    """

    def __init__(
        self,
        *,
        limits: PostgresLimits = DEFAULT.postgres,
        auth_required: bool = False,
        tls_offered: bool = False,
    ) -> None:
        # Size caps (the publisher_max_* limits), checked before a body is buffered.
        self.max_message_size = limits.publisher_max_message_size
        self.max_startup_size = limits.publisher_max_startup_size
        self.max_auth_message_size = limits.publisher_max_auth_message_size
        self.auth_required = auth_required
        self.tls_offered = tls_offered
        self.encrypted = False
        self._sasl_started = False
        self.phase = Phase.STARTUP
        self.parameters: dict[str, str] = {}
        self.encoding = "utf-8"
        self._buf = bytearray()
        self._pos = 0  # parse position in _buf; consumed bytes are dropped once per call
        self._ssl_asked = False
        self._gss_asked = False
        self._error: ProtocolError | None = None

    # -- input -----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the socket; returns every complete event they finish.

        Raises :class:`ProtocolError` on malformed input; after that the connection stays
        failed (every later call raises the same error). Bytes after Terminate or a
        CancelRequest are ignored.
        """
        if self._error is not None:
            raise self._error
        if self.phase is Phase.CLOSED:
            return []  # nothing may follow Terminate/CancelRequest; the socket is closing
        self._buf += data
        events: list[Event] = []
        try:
            while self.phase is not Phase.CLOSED:
                ev = self._next_event()
                if ev is None:
                    break
                events.append(ev)
            if self.phase is Phase.CLOSED:
                self._buf.clear()
            else:
                del self._buf[: self._pos]
            self._pos = 0
        except ProtocolError as exc:
            self._fail(exc)
            raise
        return events

    def receive_eof(self) -> bool:
        """The peer closed. Returns True when it closed in the middle of a message."""
        partial = len(self._buf) > self._pos
        self._buf.clear()
        self._pos = 0
        self.phase = Phase.CLOSED
        return partial

    def _fail(self, exc: ProtocolError) -> None:
        self._error = exc
        self.phase = Phase.CLOSED
        self._buf.clear()
        self._pos = 0

    # -- output-side state changes -----------------------------------------------

    def tls_established(self) -> None:
        """The TLS handshake after an accepted SSLRequest is done; the startup continues."""
        if not (self.tls_offered and self._ssl_asked) or self.phase is not Phase.STARTUP:
            raise RuntimeError("TLS can only start after an accepted SSLRequest")
        self.encrypted = True

    def authenticated(self) -> None:
        """The password exchange succeeded: queries may follow."""
        if self.phase is not Phase.AUTHENTICATION:
            raise RuntimeError(f"not authenticating (phase {self.phase.value})")
        self.phase = Phase.QUERY

    def start_copy_both(self) -> bytes:
        """Switch to CopyBoth mode; returns the CopyBothResponse to send."""
        if self.phase is not Phase.QUERY:
            raise RuntimeError(f"cannot start CopyBoth in phase {self.phase.value}")
        self.phase = Phase.COPY_BOTH
        return copy_both_response()

    # -- parsing -----------------------------------------------------------------

    def _next_event(self) -> Event | None:
        if self.phase is Phase.STARTUP:
            return self._next_startup()
        return self._next_tagged()

    def _next_startup(self) -> Event | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = struct.unpack_from(">i", buf, pos)
        if length < 8 or length > self.max_startup_size:
            raise ProtocolError(f"invalid startup packet length {length}")
        if len(buf) - pos < length:
            return None
        body = bytes(buf[pos + 4 : pos + length])
        self._pos = pos + length
        (code,) = struct.unpack_from(">I", body, 0)
        if code == SSL_REQUEST_CODE:
            if length != 8 or self._ssl_asked:
                raise ProtocolError("invalid or repeated SSLRequest")
            self._ssl_asked = True
            if self.tls_offered and len(buf) > self._pos:
                # The handshake must come next; bytes already sent in the clear would be
                # taken as if they had arrived encrypted (CVE-2021-23214 in Postgres).
                raise ProtocolError("received unencrypted data after SSL request")
            return SSLRequest()
        if code == GSSENC_REQUEST_CODE:
            if length != 8 or self._gss_asked:
                raise ProtocolError("invalid or repeated GSSENCRequest")
            self._gss_asked = True
            return GSSENCRequest()
        if code == CANCEL_REQUEST_CODE:
            if length != 16:
                raise ProtocolError("invalid CancelRequest length")
            pid, secret = struct.unpack_from(">ii", body, 4)
            self.phase = Phase.CLOSED
            return CancelRequest(pid, secret)
        major, minor = code >> 16, code & 0xFFFF
        if major != 3:
            raise ProtocolError(
                f"unsupported frontend protocol {major}.{minor}: server supports 3.0", "0A000"
            )
        if self.tls_offered and not self.encrypted:
            raise ProtocolError(
                "Electric requires TLS on this port: connect with sslmode=require", "28000")
        params = _parse_startup_parameters(body[4:])
        self.parameters = params
        self.encoding = python_encoding(params.get("client_encoding"))
        self.phase = Phase.AUTHENTICATION if self.auth_required else Phase.QUERY
        return StartupMessage((major, minor), params)

    def _next_tagged(self) -> Event | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            # Validate the tag as soon as it arrives: garbage should fail fast.
            if len(buf) > pos and buf[pos] not in _FRONTEND_TAGS:
                raise ProtocolError(f"invalid frontend message type {buf[pos]!r}")
            if len(buf) > pos and self.phase is Phase.AUTHENTICATION and \
                    buf[pos] not in _AUTH_TAGS:
                raise self._auth_failed()
            return None
        tag = buf[pos]
        if tag not in _FRONTEND_TAGS:
            raise ProtocolError(f"invalid frontend message type {tag!r}")
        if self.phase is Phase.AUTHENTICATION and tag not in _AUTH_TAGS:
            raise self._auth_failed()  # at once: nothing is buffered for an unauthenticated peer
        (length,) = struct.unpack_from(">i", buf, pos + 1)
        if length < 4:
            raise ProtocolError(f"invalid message length {length}")
        if self.phase is Phase.AUTHENTICATION and length > self.max_auth_message_size:
            raise ProtocolError(f"password message of {length} bytes is too long")
        if length > self.max_message_size:
            raise ProtocolError(
                f"message length {length} exceeds the limit of {self.max_message_size} bytes",
                "54000",
            )
        if len(buf) - pos < 1 + length:
            return None
        body = bytes(buf[pos + 5 : pos + 1 + length])
        self._pos = pos + 1 + length
        if self.phase is Phase.AUTHENTICATION:
            return self._password_message(tag, body)
        return self._message(tag, body)

    def _auth_failed(self) -> ProtocolError:
        # One answer for every way of not giving the right password, like Postgres.
        user = self.parameters.get("user", "")
        return ProtocolError(f'password authentication failed for user "{user}"', "28P01")

    def _password_message(self, tag: int, body: bytes) -> Event:
        if tag == ord("X"):
            _expect_empty(body, "Terminate")
            self.phase = Phase.CLOSED
            return Terminate()
        if tag != ord("p"):
            raise self._auth_failed()  # anything but a password: no password given
        if self._sasl_started:
            return SASLResponse(body)
        self._sasl_started = True
        end = body.find(b"\0")
        if end < 0 or len(body) < end + 5:
            raise self._auth_failed()
        mechanism = body[:end].decode("ascii", "replace")
        (size,) = struct.unpack_from(">i", body, end + 1)
        data = body[end + 5 :]
        if size == -1 and not data:
            return SASLInitialResponse(mechanism, None)
        if size != len(data):
            raise ProtocolError("malformed SASLInitialResponse: length does not match")
        return SASLInitialResponse(mechanism, data)

    def _message(self, tag: int, body: bytes) -> Event:
        t = chr(tag)
        if t == "X":
            _expect_empty(body, "Terminate")
            self.phase = Phase.CLOSED
            return Terminate()
        if self.phase is Phase.QUERY:
            if t == "Q":
                return Query(self._cstring_body(body, "Query"))
        elif self.phase is Phase.COPY_BOTH:
            if t == "d":
                return _copy_data_event(body)
            if t == "c":
                _expect_empty(body, "CopyDone")
                self.phase = Phase.QUERY
                return CopyDone()
            if t == "f":
                self.phase = Phase.QUERY
                return CopyFail(self._cstring_body(body, "CopyFail"))
        return UnsupportedMessage(t, _TAG_NAMES.get(tag, t))

    def _cstring_body(self, body: bytes, what: str) -> str:
        if not body or body[-1] != 0 or body.index(0) != len(body) - 1:
            raise ProtocolError(f"invalid {what} message: text must be one NUL-terminated string")
        try:
            return body[:-1].decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"invalid byte sequence for encoding {self.encoding} in {what}", "22021"
            ) from exc


def _expect_empty(body: bytes, what: str) -> None:
    if body:
        raise ProtocolError(f"invalid {what} message: unexpected {len(body)} body bytes")


_STATUS_UPDATE = struct.Struct(">QQQqB")  # after the 'r'
_FEEDBACK_V10 = struct.Struct(">qIIII")  # after the 'h' (PG10+)
_FEEDBACK_OLD = struct.Struct(">qII")  # after the 'h' (9.x)


def _copy_data_event(payload: bytes) -> Event:
    if payload[:1] == b"r":
        if len(payload) != 1 + _STATUS_UPDATE.size:
            raise ProtocolError(
                f"standby status update must be {1 + _STATUS_UPDATE.size} bytes, got {len(payload)}"
            )
        w, f, a, t, reply = _STATUS_UPDATE.unpack_from(payload, 1)
        return StandbyStatusUpdate(w, f, a, t, reply != 0)
    if payload[:1] == b"h":
        if len(payload) == 1 + _FEEDBACK_V10.size:
            return HotStandbyFeedback(*_FEEDBACK_V10.unpack_from(payload, 1))
        if len(payload) == 1 + _FEEDBACK_OLD.size:
            return HotStandbyFeedback(*_FEEDBACK_OLD.unpack_from(payload, 1))
        raise ProtocolError(f"hot standby feedback of {len(payload)} bytes")
    return CopyData(payload)


def _parse_startup_parameters(raw: bytes) -> dict[str, str]:
    # (key\0value\0)* \0 — an empty key terminates the list.
    if raw == b"\0":
        return {}
    if not raw.endswith(b"\0\0"):
        raise ProtocolError("startup packet parameters are not NUL-terminated")
    parts = raw[:-2].split(b"\0")
    if len(parts) % 2 != 0:
        raise ProtocolError("startup packet has a parameter without a value")
    params: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        key, value = parts[i], parts[i + 1]
        if not key:
            raise ProtocolError("startup packet has an empty parameter name")
        try:
            # Parameters are sent before client_encoding takes effect; libpq sends ASCII
            # or UTF-8 here in practice.
            params[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("startup parameter is not valid UTF-8") from exc
    return params



# --------------------------------------------------------------------------- framing

_HEAD = struct.Struct(">cI")


def frame(tag: bytes, body: bytes = b"") -> bytes:
    return _HEAD.pack(tag, len(body) + 4) + body


def cstring(text: str | bytes, encoding: str = "utf-8") -> bytes:
    raw = text.encode(encoding, "replace") if isinstance(text, str) else bytes(text)
    if b"\0" in raw:
        raise ValueError(f"string contains NUL: {text!r}")
    return raw + b"\0"



def copy_both_response() -> bytes:
    """``W``: text format, zero columns (what a walsender sends for START_REPLICATION)."""
    return frame(b"W", struct.pack(">bh", 0, 0))
