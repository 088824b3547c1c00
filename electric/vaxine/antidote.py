"""Antidote protocol-buffers API (Vaxine port 8087), sans-I/O.

A frame body is one message-code byte followed by the proto2 encoding of the message. This
module maps codes to generated message classes and back, builds the requests Electric sends
and the responses the embedded server sends, and decodes either side. No sockets here.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, Message

from electric import errors
from electric.pb import antidote_pb2 as pb
from electric.vaxine import etf
from electric.vaxine.framing import encode_frame

# Message code table (antidote_pb_codec): the one byte in front of every body.
CODES: dict[int, type[Message]] = {
    0: pb.ApbErrorResp,
    107: pb.ApbRegUpdate,
    108: pb.ApbGetRegResp,
    109: pb.ApbCounterUpdate,
    110: pb.ApbGetCounterResp,
    111: pb.ApbOperationResp,
    112: pb.ApbSetUpdate,
    113: pb.ApbGetSetResp,
    114: pb.ApbTxnProperties,
    115: pb.ApbBoundObject,
    116: pb.ApbReadObjects,
    117: pb.ApbUpdateOp,
    118: pb.ApbUpdateObjects,
    119: pb.ApbStartTransaction,
    120: pb.ApbAbortTransaction,
    121: pb.ApbCommitTransaction,
    122: pb.ApbStaticUpdateObjects,
    123: pb.ApbStaticReadObjects,
    124: pb.ApbStartTransactionResp,
    125: pb.ApbReadObjectResp,
    126: pb.ApbReadObjectsResp,
    127: pb.ApbCommitResp,
    128: pb.ApbStaticReadObjectsResp,
    129: pb.ApbCreateDC,
    130: pb.ApbCreateDCResp,
    131: pb.ApbConnectToDCs,
    132: pb.ApbConnectToDCsResp,
    133: pb.ApbGetConnectionDescriptor,
    134: pb.ApbGetConnectionDescriptorResp,
    135: pb.ApbValidateOrReadObjects,
    136: pb.ApbValidateOrReadObjectsResp,
}
CODE_OF: dict[str, int] = {cls.DESCRIPTOR.full_name: code for code, cls in CODES.items()}

ERROR_CODES = {0: "unknown", 1: "timeout", 2: "no_permissions", 3: "aborted"}

RRMAP = pb.RRMAP
LWWREG = pb.LWWREG
FLAG_DW = pb.FLAG_DW

IGNORE = etf.encode(etf.Atom("ignore"))
"""``term_to_binary(ignore)``: the start timestamp Electric (and antidotec) sends."""


class AntidoteDecodeError(ValueError):
    """A frame body that is not a valid Antidote message (unknown code, bad protobuf, empty)."""


class VaxineError(errors.Transient, RuntimeError):
    """Vaxine answered a request with a failure (``ApbErrorResp`` or ``success = false``)."""

    def __init__(self, message: str, errcode: int | None = None):
        super().__init__(message)
        self.errcode = errcode


# --------------------------------------------------------------------------- framing


def code_of(message: Message) -> int:
    return CODE_OF[message.DESCRIPTOR.full_name]


def encode_body(message: Message) -> bytes:
    """Code byte + protobuf: the frame body (what the transcripts call ``hex``)."""
    return bytes([code_of(message)]) + message.SerializeToString()


def encode_message(message: Message) -> bytes:
    """A complete frame, length prefix included."""
    return encode_frame(encode_body(message))


def decode_body(body: bytes) -> Message:
    """Frame body → message instance. Raises :class:`AntidoteDecodeError` on bad input."""
    if not body:
        raise AntidoteDecodeError("empty frame")
    cls = CODES.get(body[0])
    if cls is None:
        raise AntidoteDecodeError(f"unknown message code {body[0]}")
    message = cls()
    try:
        message.ParseFromString(body[1:])
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise AntidoteDecodeError(f"undecodable {cls.__name__}: {exc}") from exc
    if not message.IsInitialized():
        raise AntidoteDecodeError(f"{cls.__name__} misses required fields")
    return message


# --------------------------------------------------------------------------- requests


def bound_object(key: bytes, crdt_type: int, bucket: bytes = b"vax") -> pb.ApbBoundObject:
    return pb.ApbBoundObject(key=key, type=crdt_type, bucket=bucket)


def start_transaction(timestamp: bytes | None = IGNORE) -> pb.ApbStartTransaction:
    msg = pb.ApbStartTransaction()
    if timestamp is not None:
        msg.timestamp = timestamp
    # antidotec always sends the (empty) properties message: bytes 12 00.
    msg.properties.SetInParent()
    return msg


def update_objects(descriptor: bytes, ops: list[pb.ApbUpdateOp]) -> pb.ApbUpdateObjects:
    return pb.ApbUpdateObjects(updates=ops, transaction_descriptor=descriptor)


def read_objects(descriptor: bytes, objects: list[pb.ApbBoundObject]) -> pb.ApbReadObjects:
    return pb.ApbReadObjects(boundobjects=objects, transaction_descriptor=descriptor)


def commit_transaction(descriptor: bytes) -> pb.ApbCommitTransaction:
    return pb.ApbCommitTransaction(transaction_descriptor=descriptor)


def abort_transaction(descriptor: bytes) -> pb.ApbAbortTransaction:
    return pb.ApbAbortTransaction(transaction_descriptor=descriptor)


def static_update(ops: list[pb.ApbUpdateOp], timestamp: bytes | None = IGNORE):
    return pb.ApbStaticUpdateObjects(transaction=start_transaction(timestamp), updates=ops)


def static_read(objects: list[pb.ApbBoundObject], timestamp: bytes | None = IGNORE):
    return pb.ApbStaticReadObjects(transaction=start_transaction(timestamp), objects=objects)


# ---- operations (ApbUpdateOperation builders)


def reg_assign(value: bytes) -> pb.ApbUpdateOperation:
    return pb.ApbUpdateOperation(regop=pb.ApbRegUpdate(value=value))


def flag_set(enable: bool) -> pb.ApbUpdateOperation:
    return pb.ApbUpdateOperation(flagop=pb.ApbFlagUpdate(value=enable))


def map_update(
    updates: list[tuple[bytes, int, pb.ApbUpdateOperation]],
    removed: list[tuple[bytes, int]] = (),
) -> pb.ApbUpdateOperation:
    """``mapop`` with one nested update per (field, type, op), plus optional removed keys."""
    return pb.ApbUpdateOperation(
        mapop=pb.ApbMapUpdate(
            updates=[
                pb.ApbMapNestedUpdate(key=pb.ApbMapKey(key=k, type=t), update=op)
                for k, t, op in updates
            ],
            removedKeys=[pb.ApbMapKey(key=k, type=t) for k, t in removed],
        )
    )


def update_op(obj: pb.ApbBoundObject, operation: pb.ApbUpdateOperation) -> pb.ApbUpdateOp:
    return pb.ApbUpdateOp(boundobject=obj, operation=operation)


# ---- raw encoders
#
# The write path builds ~50 nested messages per 10-row transaction; building protobuf
# objects for them costs more than everything else on the client. These produce the same
# bytes directly (proto2 wire format: fields in number order, as SerializeToString does);
# tests check them against the message builders above.


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited field; ``tag`` is the precomputed key byte."""
    n = len(payload)
    return bytes((tag, n)) + payload if n < 0x80 else bytes((tag,)) + _varint(n) + payload


def raw_reg_assign(value: bytes) -> bytes:
    """Serialized ``ApbUpdateOperation{regop}``."""
    return _ld(0x1A, _ld(0x0A, value))


def raw_flag_set(enable: bool) -> bytes:
    """Serialized ``ApbUpdateOperation{flagop}``."""
    return b"\x3a\x02\x08\x01" if enable else b"\x3a\x02\x08\x00"


_map_keys: dict[tuple[bytes, int], bytes] = {}


def _map_key(key: bytes, crdt_type: int) -> bytes:
    """Serialized ``key`` field (an ApbMapKey) of an ApbMapNestedUpdate; few distinct ones
    (column and field names), so they are cached."""
    cached = _map_keys.get((key, crdt_type))
    if cached is None:
        cached = _ld(0x0A, _ld(0x0A, key) + bytes((0x10, crdt_type)))
        if len(_map_keys) < 10_000:
            _map_keys[(key, crdt_type)] = cached
    return cached


def raw_map_update(updates: list[tuple[bytes, int, bytes]]) -> bytes:
    """Serialized ``ApbUpdateOperation{mapop}`` from (field, type, operation bytes)."""
    nested = b"".join(
        _ld(0x0A, _map_key(key, crdt_type) + _ld(0x12, op)) for key, crdt_type, op in updates
    )
    return _ld(0x2A, nested)


def raw_bound_object(key: bytes, crdt_type: int, bucket: bytes) -> bytes:
    """Serialized ``boundobject`` field of an ``ApbUpdateOp``: the same for every op on
    that object, so callers writing several ops on one object build it once."""
    return _ld(0x0A, _ld(0x0A, key) + bytes((0x10, crdt_type)) + _ld(0x1A, bucket))


def raw_update_op_on(bound: bytes, operation: bytes) -> bytes:
    """Serialized ``ApbUpdateOp`` from :func:`raw_bound_object` bytes and an operation."""
    return bound + _ld(0x12, operation)


def raw_update_op(key: bytes, crdt_type: int, bucket: bytes, operation: bytes) -> bytes:
    """Serialized ``ApbUpdateOp`` on the bound object (key, type, bucket)."""
    return raw_bound_object(key, crdt_type, bucket) + _ld(0x12, operation)


def raw_update_objects_body(descriptor: bytes, ops: list[bytes]) -> bytes:
    """Frame body (code 118 + ``ApbUpdateObjects``) from serialized ``ApbUpdateOp``s."""
    return b"\x76" + b"".join(_ld(0x0A, op) for op in ops) + _ld(0x12, descriptor)


def raw_static_update_body(ops: list[bytes], timestamp: bytes = IGNORE) -> bytes:
    """Frame body (code 122 + ``ApbStaticUpdateObjects``) from serialized ``ApbUpdateOp``s."""
    start = _ld(0x0A, timestamp) + b"\x12\x00"  # empty ApbTxnProperties, like antidotec
    return b"\x7a" + _ld(0x0A, start) + b"".join(_ld(0x12, op) for op in ops)


# --------------------------------------------------------------------------- responses


def error_resp(errmsg: str | bytes, errcode: int = 0) -> pb.ApbErrorResp:
    if isinstance(errmsg, str):
        errmsg = errmsg.encode()
    return pb.ApbErrorResp(errmsg=errmsg, errcode=errcode)


def check_response(message: Message, expected: type[Message]) -> Message:
    """Raise :class:`VaxineError` unless ``message`` is a successful ``expected``."""
    if isinstance(message, pb.ApbErrorResp):
        first_line = message.errmsg.decode("utf-8", "replace").split("\n", 1)[0]
        raise VaxineError(f"Vaxine replied ApbErrorResp: {first_line}", message.errcode)
    if not isinstance(message, expected):
        raise VaxineError(
            f"expected {expected.__name__}, Vaxine replied {type(message).__name__}"
        )
    if isinstance(message, pb.ApbStaticReadObjectsResp):
        ok = message.objects.success and message.committime.success
        errorcode = message.objects.errorcode or message.committime.errorcode
    else:
        ok = getattr(message, "success", True)
        errorcode = getattr(message, "errorcode", 0)
    if not ok:
        name = ERROR_CODES.get(errorcode, str(errorcode))
        raise VaxineError(f"{type(message).__name__} failed: {name}", errorcode)
    return message


def read_value(resp: pb.ApbReadObjectResp):
    """Plain Python view of a read result (map → {(key, type): value}, flag → bool, ...)."""
    if resp.HasField("map"):
        return {(e.key.key, e.key.type): read_value(e.value) for e in resp.map.entries}
    if resp.HasField("reg"):
        return resp.reg.value
    if resp.HasField("flag"):
        return resp.flag.value
    if resp.HasField("counter"):
        return resp.counter.value
    if resp.HasField("set"):
        return list(resp.set.value)
    if resp.HasField("mvreg"):
        return list(resp.mvreg.values)
    return None
