"""Backend (server) side of the Postgres frontend/backend protocol, sans-I/O.

This is what Electric speaks on ``POSTGRES_REPLICATION_PORT`` (5433), where stock Postgres
subscribers connect to it as if it were a publishing Postgres (docs/protocols.md
§2). Three parts, none of which touches a socket:

* :class:`BackendConnection` — fed the bytes a client sends, returns typed events
  (:class:`SSLRequest`, :class:`StartupMessage`, :class:`Query`, :class:`StandbyStatusUpdate`,
  :class:`CopyDone`, :class:`Terminate`, …). Anything malformed raises :class:`ProtocolError`
  and nothing else; length fields are checked against a cap *before* any body is buffered, so
  a hostile length cannot make us allocate.
* builders — pure functions returning the bytes of every backend message the publisher sends
  (``authentication_ok()``, ``text_result(...)``, ``error_response(...)``, ``xlog_data(...)``,
  ``primary_keepalive(...)``, …).
* :func:`parse_command` — turns the text of a simple Query into a typed command
  (:class:`IdentifySystem`, :class:`StartReplication`, :class:`ListPublicationTables`, …);
  whatever is not understood becomes :class:`Unsupported` so the server can answer
  ``ErrorResponse(ERROR, 0A000)`` + ``ReadyForQuery`` instead of dropping the connection.

Only the simple-query protocol is supported: the subscriber never uses anything else.
Timestamps on the wire are microseconds since 2000-01-01 00:00:00 UTC ("Postgres epoch").
"""

from __future__ import annotations

import codecs
import re
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

from electric.postgres.lsn import Lsn

__all__ = [
    # errors
    "ProtocolError",
    # connection + events
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
    # builders
    "encryption_denied",
    "encryption_accepted",
    "authentication_ok",
    "authentication_sasl",
    "authentication_sasl_continue",
    "authentication_sasl_final",
    "negotiate_protocol_version",
    "parameter_status",
    "backend_key_data",
    "ready_for_query",
    "Field",
    "row_description",
    "data_row",
    "command_complete",
    "text_result",
    "empty_query_response",
    "error_response",
    "notice_response",
    "copy_both_response",
    "copy_data",
    "copy_done",
    "xlog_data",
    "primary_keepalive",
    "startup_response",
    "server_parameters",
    "fatal_for",
    "unsupported_response",
    # time
    "PG_EPOCH",
    "pg_now_micros",
    "to_pg_micros",
    "from_pg_micros",
    # commands
    "normalize_query",
    "split_identifier_list",
    "unquote_literal",
    "python_encoding",
    "parse_command",
    "Command",
    "EmptyQuery",
    "SetConfig",
    "IdentifySystem",
    "StartReplication",
    "ListPublicationTables",
    "ListPublications",
    "RelationInfo",
    "RelationColumns",
    "TransactionControl",
    "CreateReplicationSlot",
    "DropReplicationSlot",
    "Show",
    "SetParameter",
    "Unsupported",
    "TYPE_OIDS",
]

# --------------------------------------------------------------------------- constants

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678

# Postgres itself refuses startup packets above 10000 bytes (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_SIZE = 10_000
# A subscriber sends short queries and 34-byte status updates; 1 MiB is far beyond any
# legitimate message here and small enough that a hostile length field costs nothing.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

# Postgres' PG_MAX_AUTH_TOKEN_LENGTH: SCRAM messages are a few hundred bytes.
MAX_AUTH_MESSAGE_SIZE = 65_535
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


# --------------------------------------------------------------------------- time

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX_US = 946_684_800_000_000


def pg_now_micros() -> int:
    """Now, as Postgres-epoch microseconds (what ``sendTime`` fields carry)."""
    return time.time_ns() // 1000 - _PG_EPOCH_UNIX_US


def to_pg_micros(ts: datetime) -> int:
    """A datetime (naive = UTC) as Postgres-epoch microseconds."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - PG_EPOCH) // timedelta(microseconds=1)


def from_pg_micros(micros: int) -> datetime:
    """Inverse of :func:`to_pg_micros` (aware UTC datetime)."""
    return PG_EPOCH + timedelta(microseconds=micros)


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
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_startup_size: int = MAX_STARTUP_SIZE,
        auth_required: bool = False,
        tls_offered: bool = False,
    ) -> None:
        self.max_message_size = max_message_size
        self.max_startup_size = max_startup_size
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
        if self.phase is Phase.AUTHENTICATION and length > MAX_AUTH_MESSAGE_SIZE:
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


# --------------------------------------------------------------------------- builders

_HEAD = struct.Struct(">cI")


def _msg(tag: bytes, body: bytes = b"") -> bytes:
    return _HEAD.pack(tag, len(body) + 4) + body


def _cstr(text: str | bytes, encoding: str = "utf-8") -> bytes:
    raw = text.encode(encoding, "replace") if isinstance(text, str) else bytes(text)
    if b"\0" in raw:
        raise ValueError(f"string contains NUL: {text!r}")
    return raw + b"\0"


def encryption_denied() -> bytes:
    """The single byte ``N`` that declines SSLRequest / GSSENCRequest (no framing)."""
    return b"N"


def encryption_accepted() -> bytes:
    """The single byte ``S`` that accepts an SSLRequest; the TLS handshake follows."""
    return b"S"


def negotiate_protocol_version(newest_minor: int = 0, unrecognized: Sequence[str] = ()) -> bytes:
    """``v``: answer a StartupMessage asking for protocol 3.x (x > 0) or ``_pq_.*`` options.

    Send it right before AuthenticationOk; the client then continues with 3.``newest_minor``.
    """
    body = struct.pack(">ii", newest_minor, len(unrecognized))
    return _msg(b"v", body + b"".join(_cstr(name) for name in unrecognized))


def authentication_ok() -> bytes:
    return _msg(b"R", struct.pack(">i", 0))


def authentication_sasl(mechanisms: Sequence[str]) -> bytes:
    """``R`` 10: the SASL mechanisms the server offers (e.g. ``["SCRAM-SHA-256"]``)."""
    return _msg(b"R", struct.pack(">i", 10) + b"".join(_cstr(m) for m in mechanisms) + b"\0")


def authentication_sasl_continue(data: bytes) -> bytes:
    """``R`` 11: a SASL challenge (SCRAM: the server-first message)."""
    return _msg(b"R", struct.pack(">i", 11) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    """``R`` 12: the SASL outcome data (SCRAM: the server-final message, ``v=...``)."""
    return _msg(b"R", struct.pack(">i", 12) + data)


def parameter_status(name: str, value: str, encoding: str = "utf-8") -> bytes:
    return _msg(b"S", _cstr(name, encoding) + _cstr(value, encoding))


def backend_key_data(pid: int, secret: int) -> bytes:
    return _msg(b"K", struct.pack(">ii", _i32(pid), _i32(secret)))


def _i32(v: int) -> int:
    # Accept unsigned 32-bit ids too; the wire field is just 4 bytes.
    return v - (1 << 32) if v >= 1 << 31 else v


def ready_for_query(status: str = "I") -> bytes:
    """``status``: ``I`` idle, ``T`` in a transaction block, ``E`` failed transaction."""
    if status not in ("I", "T", "E"):
        raise ValueError(f"bad transaction status {status!r}")
    return _msg(b"Z", status.encode())


# type name -> (oid, typlen); enough for every result set the publisher produces.
TYPE_OIDS: dict[str, tuple[int, int]] = {
    "bool": (16, 1),
    "bytea": (17, -1),
    "char": (18, 1),
    "name": (19, 64),
    "int8": (20, 8),
    "int2": (21, 2),
    "int4": (23, 4),
    "text": (25, -1),
    "oid": (26, 4),
    "pg_lsn": (3220, 8),
    "_name": (1003, -1),
    "_text": (1009, -1),
    "int2vector": (22, -1),
}
_TYPLEN_BY_OID = {oid: typlen for oid, typlen in TYPE_OIDS.values()}


@dataclass(frozen=True)
class Field:
    """One RowDescription column."""

    name: str
    type_oid: int
    typlen: int = -1
    typmod: int = -1
    format: int = 0  # 0 = text
    table_oid: int = 0
    attnum: int = 0

    @classmethod
    def of(cls, name: str, type_: str | int) -> Field:
        """``Field.of("oid", "oid")`` or ``Field.of("x", 25)``; typlen from :data:`TYPE_OIDS`."""
        if isinstance(type_, str):
            oid, typlen = TYPE_OIDS[type_]
        else:
            oid, typlen = type_, _TYPLEN_BY_OID.get(type_, -1)
        return cls(name, oid, typlen)


def row_description(fields: Sequence[Field], encoding: str = "utf-8") -> bytes:
    parts = [struct.pack(">h", len(fields))]
    for f in fields:
        parts.append(_cstr(f.name, encoding))
        parts.append(
            struct.pack(">IhIhih", f.table_oid, f.attnum, f.type_oid, f.typlen, f.typmod, f.format)
        )
    return _msg(b"T", b"".join(parts))


Cell = str | bytes | int | bool | None


def _cell_bytes(value: Cell, encoding: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int subclass
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(int(value)).encode()
    if isinstance(value, str):
        return value.encode(encoding, "replace")
    return bytes(value)


def data_row(cells: Sequence[Cell], encoding: str = "utf-8") -> bytes:
    """Text-format DataRow. ints → decimal, bools → ``t``/``f``, ``None`` → SQL NULL."""
    parts = [struct.pack(">h", len(cells))]
    for value in cells:
        raw = _cell_bytes(value, encoding)
        if raw is None:
            parts.append(struct.pack(">i", -1))
        else:
            parts.append(struct.pack(">i", len(raw)))
            parts.append(raw)
    return _msg(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


def text_result(
    columns: Sequence[Field | tuple[str, str | int]],
    rows: Iterable[Sequence[Cell]],
    tag: str | None = None,
    encoding: str = "utf-8",
) -> bytes:
    """RowDescription + DataRows + CommandComplete (``SELECT n`` unless ``tag`` is given).

    ``columns`` are :class:`Field` or ``(name, type)`` pairs, type being a name from
    :data:`TYPE_OIDS` or an OID. ReadyForQuery is *not* included.
    """
    fields = [c if isinstance(c, Field) else Field.of(*c) for c in columns]
    out = [row_description(fields, encoding)]
    n = 0
    for row in rows:
        if len(row) != len(fields):
            raise ValueError(f"row has {len(row)} cells, expected {len(fields)}")
        out.append(data_row(row, encoding))
        n += 1
    out.append(command_complete(tag if tag is not None else f"SELECT {n}"))
    return b"".join(out)


def empty_query_response() -> bytes:
    return _msg(b"I")


def _notice_fields(
    severity: str,
    code: str,
    message: str,
    detail: str | None,
    hint: str | None,
    encoding: str,
) -> bytes:
    severity = severity.upper()
    # Real Postgres order: S (localised), V (never localised), C, M, D, H.
    items = [("S", severity), ("V", severity), ("C", code), ("M", message)]
    if detail is not None:
        items.append(("D", detail))
    if hint is not None:
        items.append(("H", hint))
    return b"".join(k.encode() + _cstr(v.replace("\0", ""), encoding) for k, v in items) + b"\0"


def error_response(
    severity: str,
    code: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    encoding: str = "utf-8",
) -> bytes:
    """ErrorResponse ``E``. ``severity``: ERROR (connection stays) or FATAL (then close)."""
    return _msg(b"E", _notice_fields(severity, code, message, detail, hint, encoding))


def notice_response(
    severity: str,
    code: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    encoding: str = "utf-8",
) -> bytes:
    """NoticeResponse ``N`` (severity WARNING, NOTICE, INFO, LOG, DEBUG)."""
    return _msg(b"N", _notice_fields(severity, code, message, detail, hint, encoding))


def copy_both_response() -> bytes:
    """``W``: text format, zero columns (what a walsender sends for START_REPLICATION)."""
    return _msg(b"W", struct.pack(">bh", 0, 0))


def copy_data(payload: bytes) -> bytes:
    return _msg(b"d", payload)


def copy_done() -> bytes:
    return _msg(b"c")


_XLOG_HEAD = struct.Struct(">cIcQQq")  # 'd', len, 'w', dataStart, walEnd, sendTime
_KEEPALIVE = struct.Struct(">cIcQqB")  # 'd', len, 'k', walEnd, sendTime, replyRequested


def xlog_data(start_lsn: int, end_lsn: int, message: bytes, send_time: int | None = None) -> bytes:
    """CopyData(XLogData ``w``) wrapping one pgoutput ``message``.

    ``send_time`` is Postgres-epoch microseconds (default: now).
    """
    if send_time is None:
        send_time = pg_now_micros()
    return _XLOG_HEAD.pack(
        b"d", 4 + 25 + len(message), b"w", int(start_lsn), int(end_lsn), send_time
    ) + bytes(message)


def primary_keepalive(
    wal_end: int, send_time: int | None = None, reply_requested: bool = False
) -> bytes:
    """CopyData(primary keepalive ``k``)."""
    if send_time is None:
        send_time = pg_now_micros()
    return _KEEPALIVE.pack(b"d", 4 + 18, b"k", int(wal_end), send_time, 1 if reply_requested else 0)


DEFAULT_SERVER_VERSION = "electric-0.0.1"


def server_parameters(
    startup: Mapping[str, str], server_version: str = DEFAULT_SERVER_VERSION
) -> dict[str, str]:
    """ParameterStatus values to announce after authentication.

    ``server_version`` must stay non-numeric (docs/protocols.md §2.3): it pins subscribers to the
    oldest query and option shapes, which are the ones :func:`parse_command` knows.
    ``client_encoding`` is echoed (UTF8 when absent, where the reference crashed).
    """
    return {
        "application_name": startup.get("application_name", ""),
        "client_encoding": startup.get("client_encoding") or "UTF8",
        "DateStyle": "ISO, MDY",
        "integer_datetimes": "on",
        "IntervalStyle": "postgres",
        "server_encoding": "UTF8",
        "server_version": server_version,
        "standard_conforming_strings": "on",
        "TimeZone": "Etc/UTC",
    }


def startup_response(
    parameters: Mapping[str, str],
    pid: int,
    secret: int = 0,
    startup: StartupMessage | None = None,
) -> bytes:
    """AuthenticationOk, one ParameterStatus per entry, BackendKeyData, ReadyForQuery(I).

    Given the client's ``startup`` message, a NegotiateProtocolVersion goes first when the
    client asked for a newer minor version or for ``_pq_.`` protocol options (Postgres does
    the same; a newer libpq then falls back to 3.0).
    """
    parts = []
    if startup is not None:
        pq_options = [k for k in startup.parameters if k.startswith("_pq_.")]
        if startup.protocol[1] > 0 or pq_options:
            parts.append(negotiate_protocol_version(0, pq_options))
    parts.append(authentication_ok())
    parts += [parameter_status(k, v) for k, v in parameters.items()]
    parts.append(backend_key_data(pid, secret))
    parts.append(ready_for_query("I"))
    return b"".join(parts)


def fatal_for(exc: ProtocolError) -> bytes:
    """The FATAL ErrorResponse to send before closing on a protocol error."""
    return error_response("FATAL", exc.sqlstate, exc.message)


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class EmptyQuery:
    """Only whitespace/semicolons: answer EmptyQueryResponse + ReadyForQuery."""


@dataclass(frozen=True)
class SetConfig:
    """``SELECT pg_catalog.set_config('search_path', '', false)``.

    Reply: ``text_result([("set_config", "text")], [[value]])``.
    """

    name: str
    value: str
    is_local: bool


@dataclass(frozen=True)
class IdentifySystem:
    """Reply columns: systemid text, timeline int4, xlogpos text, dbname text."""


@dataclass(frozen=True)
class StartReplication:
    """``START_REPLICATION SLOT "s" LOGICAL X/Y (opt 'v', ...)``."""

    slot: str
    lsn: int
    options: dict[str, str | None] = field(default_factory=dict)

    @property
    def proto_version(self) -> int | None:
        v = self.options.get("proto_version")
        try:
            return int(v) if v is not None else None
        except ValueError:
            return None

    @property
    def publication_names(self) -> list[str]:
        raw = self.options.get("publication_names")
        return split_identifier_list(raw) if raw else []


@dataclass(frozen=True)
class ListPublicationTables:
    """The ``pg_publication_tables`` query (REFRESH PUBLICATION / CREATE SUBSCRIPTION).

    Reply columns: schemaname name, tablename name (+ attnames _name when ``with_attnames``,
    the PG15 numeric-version form).
    """

    publications: list[str]
    with_attnames: bool = False


@dataclass(frozen=True)
class ListPublications:
    """``SELECT t.pubname FROM pg_catalog.pg_publication t WHERE t.pubname IN (...)``.

    Reply: one ``pubname name`` row per publication that exists.
    """

    publications: list[str]


@dataclass(frozen=True)
class RelationInfo:
    """Table sync: ``SELECT c.oid, c.relreplident, c.relkind FROM pg_class ...``."""

    schema: str
    table: str


@dataclass(frozen=True)
class RelationColumns:
    """Table sync: the ``pg_attribute`` query. PG15 adds ``a.attnum`` as first column."""

    relid: int
    with_attnum: bool = False


@dataclass(frozen=True)
class TransactionControl:
    """BEGIN … / COMMIT / ROLLBACK / END / ABORT — reply CommandComplete(``kind``)."""

    kind: str  # "BEGIN", "COMMIT" or "ROLLBACK"


@dataclass(frozen=True)
class CreateReplicationSlot:
    slot: str
    temporary: bool
    logical: bool
    plugin: str | None
    options: str  # the rest, unparsed (e.g. "USE_SNAPSHOT" or "(SNAPSHOT 'use')")


@dataclass(frozen=True)
class DropReplicationSlot:
    slot: str
    wait: bool


@dataclass(frozen=True)
class Show:
    name: str


@dataclass(frozen=True)
class SetParameter:
    name: str
    value: str


@dataclass(frozen=True)
class Unsupported:
    """Anything else. Answer :func:`unsupported_response` (ERROR 0A000 + ReadyForQuery)."""

    text: str
    reason: str = "not supported by Electric"


Command = (
    EmptyQuery
    | SetConfig
    | IdentifySystem
    | StartReplication
    | ListPublicationTables
    | ListPublications
    | RelationInfo
    | RelationColumns
    | TransactionControl
    | CreateReplicationSlot
    | DropReplicationSlot
    | Show
    | SetParameter
    | Unsupported
)


def unsupported_response(cmd: Unsupported, status: str = "I") -> bytes:
    """ErrorResponse(ERROR, 0A000) + ReadyForQuery: the connection stays usable."""
    shown = cmd.text if len(cmd.text) <= 200 else cmd.text[:200] + "…"
    return error_response(
        "ERROR", "0A000", f"{cmd.reason}: {shown}" if shown else cmd.reason
    ) + ready_for_query(status)


def normalize_query(text: str) -> str:
    """docs/protocols.md §2.2: drop trailing NULs and ``;``, collapse whitespace outside quotes.

    Quoted strings (``'…'`` with ``''``, ``E'…'`` with backslash escapes, ``"…"``) are kept
    byte for byte, so literals such as publication names survive intact.
    """
    text = text.strip()
    while text.endswith("\0"):  # NULs and white space may alternate at the end
        text = text.rstrip("\0").rstrip()
    out: list[str] = []
    i, n = 0, len(text)
    pending_space = False
    while i < n:
        ch = text[i]
        if ch.isspace():
            pending_space = True
            i += 1
            continue
        if pending_space and out:
            out.append(" ")
        pending_space = False
        if ch in "'\"":
            backslash = ch == "'" and i > 0 and text[i - 1] in "eE" and _is_estring_prefix(text, i)
            j = _skip_quoted(text, i, backslash)
            out.append(text[i:j])
            i = j
            continue
        out.append(ch)
        i += 1
    result = "".join(out)
    while result.endswith(";") or result.endswith(" "):
        result = result[:-1]
    return result


def _is_estring_prefix(text: str, quote_pos: int) -> bool:
    # E'...' only when the E is a token on its own (not the end of an identifier).
    return quote_pos < 2 or not (text[quote_pos - 2].isalnum() or text[quote_pos - 2] == "_")


def _skip_quoted(text: str, i: int, backslash: bool) -> int:
    """Index just past the quoted token starting at ``text[i]`` (or len(text) if unclosed)."""
    q = text[i]
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == q:
            if j + 1 < n and text[j + 1] == q:
                j += 2
                continue
            return j + 1
        j += 1
    return n


# A quoted SQL literal as the subscriber builds it (quote_literal: '' doubling, E'' when
# the value contains a backslash).
_LIT = r"(?:[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')"
_LIT_LIST = rf"{_LIT}(?:\s*,\s*{_LIT})*"


def unquote_literal(lit: str) -> str:
    """``'it''s'`` → ``it's``; ``E'a\\\\b'`` → ``a\\b``."""
    if lit[:1] in "eE" and lit[1:2] == "'":
        body = lit[2:-1].replace("''", "'")
        return re.sub(r"\\(.)", r"\1", body)
    if len(lit) >= 2 and lit[0] == lit[-1] == "'":
        return lit[1:-1].replace("''", "'")
    raise ValueError(f"not a string literal: {lit!r}")


def _literal_list(text: str) -> list[str]:
    return [unquote_literal(m.group(0)) for m in re.finditer(_LIT, text)]


def split_identifier_list(text: str) -> list[str]:
    """Postgres' SplitIdentifierString: ``"a", b ,"C""d"`` → ``['a', 'b', 'C"d']``.

    Unquoted names are lower-cased, as Postgres does.
    """
    names: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j = _skip_quoted(text, i, False)
            names.append(text[i + 1 : j - 1].replace('""', '"'))
            i = j
        else:
            j = i
            while j < n and text[j] != "," and not text[j].isspace():
                j += 1
            if j == i:
                raise ValueError(f"bad identifier list: {text!r}")
            names.append(text[i:j].lower())
            i = j
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return names
        if text[i] != ",":
            raise ValueError(f"bad identifier list: {text!r}")
        i += 1


_I = re.IGNORECASE
_RE_SET_CONFIG = re.compile(
    rf"^SELECT (?:pg_catalog\.)?set_config\(\s*(?P<name>{_LIT})\s*,\s*(?P<value>{_LIT})\s*,"
    r"\s*(?P<local>true|false)\s*\)$",
    _I,
)
_RE_LIST_TABLES = re.compile(
    r"^SELECT DISTINCT t\.schemaname\s*,\s*t\.tablename(?P<attnames>\s*,\s*t\.attnames)?"
    rf" FROM pg_catalog\.pg_publication_tables t WHERE t\.pubname IN \(\s*(?P<list>{_LIT_LIST})\s*\)$",
    _I,
)
_RE_LIST_PUBS = re.compile(
    r"^SELECT t\.pubname FROM pg_catalog\.pg_publication t WHERE t\.pubname IN"
    rf" \(\s*(?P<list>{_LIT_LIST})\s*\)$",
    _I,
)
_RE_RELATION_INFO = re.compile(
    r"^SELECT c\.oid\s*,\s*c\.relreplident\s*,\s*c\.relkind FROM pg_catalog\.pg_class c"
    r" INNER JOIN pg_catalog\.pg_namespace n ON \(c\.relnamespace = n\.oid\)"
    rf" WHERE n\.nspname = (?P<schema>{_LIT}) AND c\.relname = (?P<table>{_LIT})$",
    _I,
)
_RE_RELATION_COLUMNS = re.compile(
    r"^SELECT (?P<attnum>a\.attnum\s*,\s*)?a\.attname\s*,\s*a\.atttypid\s*,\s*"
    r"a\.attnum = ANY\(i\.indkey\) FROM pg_catalog\.pg_attribute a .*"
    r"\bAND a\.attrelid = (?P<relid>\d+) ORDER BY a\.attnum$",
    _I,
)
_RE_SHOW = re.compile(r"^SHOW (?P<name>[A-Za-z_][\w.]*|\"[^\"]+\")$", _I)
_RE_SET = re.compile(
    r"^SET (?:SESSION |LOCAL )?(?P<name>[A-Za-z_][\w.]*) *(?:=|\bTO\b) *(?P<value>.+)$", _I
)
_RE_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


def parse_command(text: str) -> Command:
    """Classify the text of a simple Query (docs/protocols.md §2.2)."""
    q = normalize_query(text)
    if not q:
        return EmptyQuery()
    if _has_unquoted(q, ";"):
        return Unsupported(q, "multiple statements in one query are not supported")
    word, _, rest = q.partition(" ")
    kw = word.upper()
    try:
        if kw == "SELECT":
            return _parse_select(q)
        if kw == "IDENTIFY_SYSTEM":
            return IdentifySystem() if not rest else Unsupported(q, "syntax error")
        if kw == "START_REPLICATION":
            return _parse_start_replication(q, rest)
        if kw == "CREATE_REPLICATION_SLOT":
            return _parse_create_slot(q, rest)
        if kw == "DROP_REPLICATION_SLOT":
            return _parse_drop_slot(q, rest)
        if kw in ("BEGIN", "START") and (kw == "BEGIN" or rest.upper().startswith("TRANSACTION")):
            return TransactionControl("BEGIN")
        if kw in ("COMMIT", "END") and rest.upper() in ("", "WORK", "TRANSACTION"):
            return TransactionControl("COMMIT")
        if kw in ("ROLLBACK", "ABORT") and rest.upper() in ("", "WORK", "TRANSACTION"):
            return TransactionControl("ROLLBACK")
        if kw == "SHOW":
            m = _RE_SHOW.match(q)
            if m:
                return Show(_ident(m.group("name")))
        if kw == "SET":
            m = _RE_SET.match(q)
            if m:
                value = m.group("value").strip()
                if re.fullmatch(_LIT, value):
                    value = unquote_literal(value)
                return SetParameter(m.group("name").lower(), value)
    except ValueError as exc:
        return Unsupported(q, f"could not parse {kw}: {exc}")
    return Unsupported(q, f"{kw} is not supported by Electric" if kw else "not supported")


def _has_unquoted(q: str, ch: str) -> bool:
    i, n = 0, len(q)
    while i < n:
        c = q[i]
        if c in "'\"":
            backslash = c == "'" and i > 0 and q[i - 1] in "eE" and _is_estring_prefix(q, i)
            i = _skip_quoted(q, i, backslash)
            continue
        if c == ch:
            return True
        i += 1
    return False


def _parse_select(q: str) -> Command:
    if m := _RE_SET_CONFIG.match(q):
        return SetConfig(
            unquote_literal(m.group("name")),
            unquote_literal(m.group("value")),
            m.group("local").lower() == "true",
        )
    if m := _RE_LIST_TABLES.match(q):
        return ListPublicationTables(_literal_list(m.group("list")), bool(m.group("attnames")))
    if m := _RE_LIST_PUBS.match(q):
        return ListPublications(_literal_list(m.group("list")))
    if m := _RE_RELATION_INFO.match(q):
        return RelationInfo(unquote_literal(m.group("schema")), unquote_literal(m.group("table")))
    if m := _RE_RELATION_COLUMNS.match(q):
        return RelationColumns(int(m.group("relid")), bool(m.group("attnum")))
    return Unsupported(q, "query not supported by Electric")


# -- replication command tokenizer (the walsender grammar, the parts we need) ----------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lsn>[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?![\w/])
      | (?P<qident>"(?:[^"]|"")*")
      | (?P<str>[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')
      | (?P<ident>[A-Za-z_][\w$]*)
      | (?P<num>\d+)
      | (?P<punct>[(),=])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str

    @property
    def value(self) -> str:
        if self.kind == "qident":
            return self.text[1:-1].replace('""', '"')
        if self.kind == "ident":
            return self.text.lower()
        if self.kind == "str":
            return unquote_literal(self.text)
        return self.text


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unexpected input at {text[pos : pos + 20]!r}")
        kind = m.lastgroup
        assert kind is not None
        toks.append(_Tok(kind, m.group(kind)))
        pos = m.end()
    return toks


def _ident(text: str) -> str:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1].replace('""', '"')
    return text.lower()


def _expect_kw(toks: list[_Tok], i: int, kw: str) -> int:
    if i >= len(toks) or toks[i].kind != "ident" or toks[i].text.upper() != kw:
        raise ValueError(f"expected {kw}")
    return i + 1


def _name_at(toks: list[_Tok], i: int, what: str) -> str:
    if i >= len(toks) or toks[i].kind not in ("ident", "qident"):
        raise ValueError(f"expected {what}")
    return toks[i].value


def _parse_start_replication(q: str, rest: str) -> Command:
    toks = _tokenize(rest)
    if not toks or toks[0].kind != "ident" or toks[0].text.upper() != "SLOT":
        return Unsupported(q, "physical replication is not supported by Electric")
    slot = _name_at(toks, 1, "slot name")
    if len(toks) < 3 or toks[2].kind != "ident" or toks[2].text.upper() != "LOGICAL":
        return Unsupported(q, "physical replication is not supported by Electric")
    if len(toks) < 4 or toks[3].kind != "lsn":
        raise ValueError("expected an LSN (X/Y)")
    lsn = int(Lsn.parse(toks[3].text))
    options = _parse_options(toks, 4)
    return StartReplication(slot, lsn, options)


def _parse_options(toks: list[_Tok], i: int) -> dict[str, str | None]:
    """``( name ['value'] [, ...] )`` — the logical decoding plugin options."""
    options: dict[str, str | None] = {}
    if i == len(toks):
        return options
    if toks[i].text != "(":
        raise ValueError("expected '(' before options")
    i += 1
    if i < len(toks) and toks[i].text == ")":
        i += 1
    else:
        while True:
            name = _name_at(toks, i, "option name")
            i += 1
            value: str | None = None
            if i < len(toks) and toks[i].kind in ("str", "ident", "num", "qident"):
                value = toks[i].value if toks[i].kind != "ident" else toks[i].text
                i += 1
            options[name] = value
            if i < len(toks) and toks[i].text == ",":
                i += 1
                continue
            if i < len(toks) and toks[i].text == ")":
                i += 1
                break
            raise ValueError("expected ',' or ')' in options")
    if i != len(toks):
        raise ValueError("unexpected text after options")
    return options


def _parse_create_slot(q: str, rest: str) -> Command:
    m = re.match(r'\s*("(?:[^"]|"")*"|[A-Za-z_][\w$]*)\s*(.*)$', rest)
    if not m:
        raise ValueError("expected slot name")
    slot = _ident(m.group(1))
    tail = m.group(2)
    temporary = False
    if re.match(r"TEMPORARY\b", tail, _I):
        temporary = True
        tail = tail[len("TEMPORARY") :].lstrip()
    if re.match(r"PHYSICAL\b", tail, _I):
        return CreateReplicationSlot(slot, temporary, False, None, tail[len("PHYSICAL") :].strip())
    if not re.match(r"LOGICAL\b", tail, _I):
        raise ValueError("expected LOGICAL or PHYSICAL")
    tail = tail[len("LOGICAL") :].lstrip()
    pm = re.match(r'("(?:[^"]|"")*"|[A-Za-z_][\w$]*)\s*(.*)$', tail)
    if not pm:
        raise ValueError("expected output plugin name")
    return CreateReplicationSlot(slot, temporary, True, _ident(pm.group(1)), pm.group(2).strip())


def _parse_drop_slot(q: str, rest: str) -> Command:
    toks = _tokenize(rest)
    slot = _name_at(toks, 0, "slot name")
    if len(toks) == 1:
        return DropReplicationSlot(slot, False)
    if len(toks) == 2 and toks[1].kind == "ident" and toks[1].text.upper() == "WAIT":
        return DropReplicationSlot(slot, True)
    raise ValueError("unexpected text after slot name")
