"""Satellite websocket framing: one type byte followed by a protobuf body.

Sans-I/O: bytes in, protobuf messages out, and back. The websocket frame carries the
length, so there is no length prefix (the comment in the upstream .proto claiming one is
stale). An all-default message encodes to an empty body, so e.g. ``SatPingReq`` is the single
byte ``05``.

The table below is the typescript-client 0.3.0 protocol. Type 13 (SatMigrationNotification)
exists in clients but the server treats it like any unknown type, exactly as the reference.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, Message

from electric.pb import satellite_pb2 as pb

SatErrorResp = pb.SatErrorResp
SatAuthReq = pb.SatAuthReq
SatAuthResp = pb.SatAuthResp
SatGetServerInfoReq = pb.SatGetServerInfoReq
SatGetServerInfoResp = pb.SatGetServerInfoResp
SatPingReq = pb.SatPingReq
SatPingResp = pb.SatPingResp
SatInStartReplicationReq = pb.SatInStartReplicationReq
SatInStartReplicationResp = pb.SatInStartReplicationResp
SatInStopReplicationReq = pb.SatInStopReplicationReq
SatInStopReplicationResp = pb.SatInStopReplicationResp
SatOpLog = pb.SatOpLog
SatRelation = pb.SatRelation

# Error codes, re-exported so callers need not reach into the generated module.
INTERNAL = pb.SatErrorResp.INTERNAL
AUTH_REQUIRED = pb.SatErrorResp.AUTH_REQUIRED
AUTH_FAILED = pb.SatErrorResp.AUTH_FAILED
REPLICATION_FAILED = pb.SatErrorResp.REPLICATION_FAILED
INVALID_REQUEST = pb.SatErrorResp.INVALID_REQUEST

# Start-request options.
OPT_NONE = pb.SatInStartReplicationReq.NONE
OPT_LAST_ACKNOWLEDGED = pb.SatInStartReplicationReq.LAST_ACKNOWLEDGED
OPT_SYNC_MODE = pb.SatInStartReplicationReq.SYNC_MODE
OPT_FIRST_LSN = pb.SatInStartReplicationReq.FIRST_LSN
# Not in 0.3.0's enum; later clients send 4 to mean "from now on". proto3 enums are open, so
# the number survives decoding and we honour it (superset behaviour).
OPT_LAST_LSN = 4

TYPE_TO_MESSAGE: dict[int, type[Message]] = {
    0: pb.SatErrorResp,
    1: pb.SatAuthReq,
    2: pb.SatAuthResp,
    3: pb.SatGetServerInfoReq,
    4: pb.SatGetServerInfoResp,
    5: pb.SatPingReq,
    6: pb.SatPingResp,
    7: pb.SatInStartReplicationReq,
    8: pb.SatInStartReplicationResp,
    9: pb.SatInStopReplicationReq,
    10: pb.SatInStopReplicationResp,
    11: pb.SatOpLog,
    12: pb.SatRelation,
}
MESSAGE_TO_TYPE: dict[str, int] = {
    cls.DESCRIPTOR.full_name: type_byte for type_byte, cls in TYPE_TO_MESSAGE.items()
}


class FrameError(ValueError):
    """A websocket payload that is not a Satellite message.

    ``kind`` is one of ``"empty"``, ``"unknown_type"``, ``"undecodable"``; the session answers
    all of them with ``SatErrorResp{INTERNAL}`` and a close.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def type_byte_of(msg: Message) -> int:
    try:
        return MESSAGE_TO_TYPE[msg.DESCRIPTOR.full_name]
    except KeyError:
        raise TypeError(f"{msg.DESCRIPTOR.full_name} is not a Satellite frame message") from None


def encode(msg: Message) -> bytes:
    """Type byte + deterministic protobuf body (field-number order, defaults omitted)."""
    return bytes((type_byte_of(msg),)) + msg.SerializeToString(deterministic=True)


def decode(data: bytes) -> Message:
    """Parse one websocket payload; raises :class:`FrameError` with a readable reason."""
    if not data:
        raise FrameError("empty", "empty frame (no type byte)")
    type_byte = data[0]
    cls = TYPE_TO_MESSAGE.get(type_byte)
    if cls is None:
        raise FrameError("unknown_type", f"unknown message type byte {type_byte}")
    msg = cls()
    try:
        msg.ParseFromString(bytes(data[1:]))
    except (DecodeError, ValueError, RuntimeError):
        # The library's own text adds nothing here (and says "Error" in a warning line).
        raise FrameError(
            "undecodable",
            f"cannot decode {cls.DESCRIPTOR.name} body ({len(data) - 1} bytes): malformed protobuf",
        ) from None
    return msg


def name_of(msg: Message) -> str:
    return msg.DESCRIPTOR.name


# -- small constructors for the frames the server sends -----------------------------------


def error(code: int = INTERNAL) -> pb.SatErrorResp:
    return pb.SatErrorResp(error_type=code)


def ping_resp(lsn: bytes | None) -> pb.SatPingResp:
    """``lsn=None`` leaves the field absent; ``b""`` sets it present-and-empty (``06 0a 00``)."""
    msg = pb.SatPingResp()
    if lsn is not None:
        msg.lsn = lsn
    return msg


def server_start_req(lsn: bytes) -> pb.SatInStartReplicationReq:
    """What the server sends after auth to start the client → server stream (always
    ``[SYNC_MODE]`` and a batch size of 1, meaning "ack every transaction")."""
    return pb.SatInStartReplicationReq(lsn=lsn, options=[OPT_SYNC_MODE], sync_batch_size=1)
