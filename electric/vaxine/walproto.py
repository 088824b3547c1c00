"""Vaxine's WAL replication protocol (port 8088), both sides, sans-I/O.

Every message is one ETF term in a ``{packet, 4}`` frame (:mod:`electric.vaxine.framing`):

* client → server ``{vx_cli_req, Ref, {vx_cli_start_req, [{offset, Offset}]}}`` where
  Offset is ``0`` (the whole log), ``eof`` (new transactions only) or ``{L, R}``
  (everything after it); the server answers ``{vx_srv_res, Ref, {vx_srv_start_res, RepId}}``
  and then pushes one ``{vx_wal_txn, TxId, DcId, {L, R}, Ops}`` per committed
  transaction, in commit order;
* client → server ``{vx_cli_req, Ref, {vx_cli_stop_req, RepId}}``, answered with
  ``{vx_srv_res, Ref, {vx_srv_stop_res}}``;
* anything else gets a bare ``{error, bad_proto}`` and the connection is closed, as on the
  real server; a start with an unusable offset gets
  ``{vx_srv_res, Ref, {error, unknown_error}}`` and is closed too.

The client (:mod:`electric.vaxine.stream`) and the standalone server
(:mod:`electric.vaxine.embedded.replication`) both build and parse messages here; their
shells only read, write and time out. :class:`ServerSession` holds one server
connection's protocol state and decides every reply.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from electric.vaxine import etf
from electric.vaxine.etf import Atom, Reference
from electric.vaxine.memo import EncodingMemo
from electric.vaxine.offset import InvalidOffset, StartOffset, VaxineOffset, start_term

VX_CLI_REQ = Atom("vx_cli_req")
VX_SRV_RES = Atom("vx_srv_res")
VX_WAL_TXN = Atom("vx_wal_txn")
START_REQ = Atom("vx_cli_start_req")
STOP_REQ = Atom("vx_cli_stop_req")
START_RES = Atom("vx_srv_start_res")
STOP_RES = Atom("vx_srv_stop_res")
OFFSET = Atom("offset")
EOF = Atom("eof")
ERROR = Atom("error")
BAD_PROTO = etf.encode((ERROR, Atom("bad_proto")))

_CLIENT_NODE = Atom("nonode@nohost")
# version byte, a 5-tuple, the tag atom: how every transaction frame starts
TXN_HEAD = etf.VERSION_BYTE + etf.tuple_head(5) + etf.encode_body(VX_WAL_TXN)


class StreamProtocolError(RuntimeError):
    """The server said something the stream protocol does not allow."""


# --------------------------------------------------------------------------- client side

_refs = itertools.count(1)


def _new_ref() -> Reference:
    return Reference(_CLIENT_NODE, 0, (next(_refs) & 0x3FFFF, 0, 0))


def start_request(start: StartOffset, ref: Reference | None = None) -> tuple[Reference, bytes]:
    """The request ref and the ETF ``{vx_cli_req, Ref, {vx_cli_start_req, Opts}}``."""
    ref = ref or _new_ref()
    body = etf.encode((VX_CLI_REQ, ref, (START_REQ, [(OFFSET, start_term(start))])))
    return ref, body


def stop_request(rep_id: Reference, ref: Reference | None = None) -> bytes:
    ref = ref or _new_ref()
    return etf.encode((VX_CLI_REQ, ref, (STOP_REQ, rep_id)))


def parse_start_response(term: Any, ref: Reference) -> Reference:
    """The replication id from ``{vx_srv_res, Ref, {vx_srv_start_res, RepId}}``."""
    if (isinstance(term, tuple) and len(term) == 3 and term[0] == VX_SRV_RES
            and term[1] == ref and isinstance(term[2], tuple) and len(term[2]) == 2
            and term[2][0] == START_RES):
        return term[2][1]
    raise StreamProtocolError(f"start refused or unexpected reply: {term!r}")


class ClientSession:
    """One stream reader's protocol state, across its connections: where to resume, the
    pending start request, and which transactions are new.

    A resumed stream may send the transaction at its start offset again (docs/protocols.md
    §4.3), and a reconnect resumes after the last transaction accepted, so :meth:`accept`
    drops anything at or before it: the consumer sees no duplicate and no gap.
    """

    def __init__(self, start: StartOffset) -> None:
        self.start = start_term(start)
        # The last transaction accepted (where a new connection resumes), if any.
        self.last: VaxineOffset | None = (
            self.start if isinstance(self.start, VaxineOffset) else None)
        self.rep_id: Reference | None = None
        self._ref: Reference | None = None

    @property
    def resume_point(self) -> Any:
        return self.last if self.last is not None else self.start

    def connect(self) -> bytes:
        """A new connection: the start request to send first."""
        self.rep_id = None
        self._ref, body = start_request(self.resume_point)
        return body

    def on_start_reply(self, body: bytes) -> Reference:
        """The first frame of a connection; :class:`StreamProtocolError` unless it is the
        start reply to our request."""
        self.rep_id = parse_start_response(etf.decode(body), self._ref)
        return self.rep_id

    def accept(self, offset: VaxineOffset) -> bool:
        """Whether the transaction at ``offset`` is new; if so, later connections resume
        after it."""
        if self.last is not None and offset.right <= self.last.right:
            return False
        self.last = offset
        return True


def decode_txn(body: bytes, memo: EncodingMemo | None = None,
               ) -> tuple[Any, Any, VaxineOffset, Any]:
    """``(TxId, DcId, Offset, Ops)`` of a ``vx_wal_txn`` frame body.

    Raises :class:`StreamProtocolError` for any other term, ``ValueError`` for a bad offset.
    With the ``memo`` of an embedded Vaxine running in this process, ``Ops`` it encoded
    itself are taken from the memo instead of being decoded.
    """
    if memo is None or not body.startswith(TXN_HEAD):
        term = etf.decode(body)
        if not (isinstance(term, tuple) and len(term) == 5 and term[0] == VX_WAL_TXN):
            raise StreamProtocolError(f"unexpected frame on the stream: {term!r:.200}")
        return term[1], term[2], VaxineOffset.of(term[3]), term[4]
    txid, pos = etf.decode_at(body, len(TXN_HEAD))
    dc_id, pos = etf.decode_at(body, pos)
    offset, pos = etf.decode_at(body, pos)
    found, ops = memo.recall(memoryview(body)[pos:])
    if not found:
        ops, end = etf.decode_at(body, pos)
        if end != len(body):
            raise etf.ETFError(f"{len(body) - end} trailing bytes after the term")
    return txid, dc_id, VaxineOffset.of(offset), ops


# --------------------------------------------------------------------------- server side


def txn_frame(offset: int, txid_body: bytes, ops_body: bytes, dc_id_body: bytes) -> bytes:
    """The ETF ``{vx_wal_txn, TxId, DcId, {Offset, Offset}, Ops}`` of a logged transaction
    (its parts already encoded, as the log keeps them)."""
    return b"".join((TXN_HEAD, txid_body, dc_id_body, etf.encode_body((offset, offset)),
                     ops_body))


def parse_start_offset(opts: Any) -> int | Atom | VaxineOffset:
    """The ``offset`` option of a start request: ``0``, ``eof`` or ``(L, R)``."""
    if not isinstance(opts, list):
        raise InvalidOffset("options are not a list")
    offset = 0
    for opt in opts:
        if isinstance(opt, tuple) and len(opt) == 2 and opt[0] == OFFSET:
            offset = opt[1]
    if offset == 0 or offset == EOF:
        return offset
    try:
        return VaxineOffset.of(offset)
    except InvalidOffset:
        raise InvalidOffset(f"unsupported offset {offset!r}") from None


@dataclass(frozen=True)
class StartStream:
    """Start streaming after ``start`` (``0``, ``eof`` or an offset); then call
    :meth:`ServerSession.started` with the new replication id and send its reply."""

    ref: Reference
    start: int | Atom | VaxineOffset


@dataclass(frozen=True)
class StopStream:
    """Stop the running stream (let a frame being sent finish), then send ``reply``."""

    reply: bytes


@dataclass(frozen=True)
class Close:
    """Send ``reply`` (if any), then close the connection; ``reason`` is for the log."""

    reason: str
    reply: bytes | None = None


class ServerSession:
    """One replication connection's protocol state (at most one stream at a time)."""

    def __init__(self) -> None:
        self.rep_id: Reference | None = None

    def handle(self, body: bytes) -> StartStream | StopStream | Close:
        """What to do about one request frame."""
        try:
            term = etf.decode(body)
        except etf.ETFError as exc:
            return _bad_proto(f"undecodable request ({exc})")
        if not (isinstance(term, tuple) and len(term) == 3 and term[0] == VX_CLI_REQ
                and isinstance(term[2], tuple) and term[2]):
            return _bad_proto("unknown request")
        ref, req = term[1], term[2]
        if req[0] == START_REQ and len(req) == 2:
            if self.rep_id is not None:
                # One replication per connection; the real server drops the connection too.
                return Close("second start on one connection; closing")
            try:
                start = parse_start_offset(req[1])
            except InvalidOffset as exc:
                return Close(str(exc), etf.encode((VX_SRV_RES, ref, (ERROR, Atom("unknown_error")))))
            return StartStream(ref, start)
        if req[0] == STOP_REQ and len(req) == 2:
            if self.rep_id is None or req[1] != self.rep_id:
                return _bad_proto("stop request with an unknown replication id")
            self.rep_id = None
            return StopStream(etf.encode((VX_SRV_RES, ref, (STOP_RES,))))
        return _bad_proto("unknown request")

    def started(self, ref: Reference, rep_id: Reference) -> bytes:
        """Record the stream ``rep_id`` started for request ``ref``; the reply to send."""
        self.rep_id = rep_id
        return etf.encode((VX_SRV_RES, ref, (START_RES, rep_id)))


def _bad_proto(why: str) -> Close:
    return Close(f"{why}; replying bad_proto and closing", BAD_PROTO)
