"""Satellite lsn bytes <-> Vaxine WAL offsets.

Clients persist the ``SatOpBegin.lsn`` we send and hand it back to resume, and other Electric
nodes may have to read it, so it is exactly Erlang's ``term_to_binary`` (OTP 24) of the
offset ``{L, R}``. Only this narrow slice of the external term format is needed here: a
version byte, a 2-tuple and non-negative integers. Anything else a client sends is not an
offset we produced and is rejected rather than guessed at.
"""

from __future__ import annotations

import struct

Offset = tuple[int, int]
StartOffset = Offset | int | str
"""What to hand to the WAL stream: ``"eof"``, ``0`` (full history) or ``(L, R)``."""

_VERSION = 131
_SMALL_INTEGER = 97
_INTEGER = 98
_SMALL_BIG = 110
_LARGE_BIG = 111
_SMALL_TUPLE = 104
# A bignum longer than this cannot be a file position; refuse before building it.
_MAX_BIG_DIGITS = 16


class InvalidLsn(ValueError):
    pass


def _encode_int(value: int) -> bytes:
    if 0 <= value <= 255:
        return bytes((_SMALL_INTEGER, value))
    if -(2**31) <= value < 2**31:
        return bytes((_INTEGER,)) + struct.pack(">i", value)
    sign = 1 if value < 0 else 0
    magnitude = abs(value)
    digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
    if len(digits) > 255:
        return bytes((_LARGE_BIG,)) + struct.pack(">I", len(digits)) + bytes((sign,)) + digits
    return bytes((_SMALL_BIG, len(digits), sign)) + digits


def _encode_term(term: object) -> bytes:
    if isinstance(term, bool) or not isinstance(term, int | tuple):
        raise TypeError(f"cannot encode {term!r} as an offset term")
    if isinstance(term, int):
        return _encode_int(term)
    if len(term) > 255:
        raise TypeError("offset tuple too large")
    return bytes((_SMALL_TUPLE, len(term))) + b"".join(_encode_term(t) for t in term)


def encode_offset(offset: object) -> bytes:
    """``term_to_binary(offset)`` for an offset ``(L, R)`` (or a bare integer, as tests use)."""
    return bytes((_VERSION,)) + _encode_term(offset)


def _decode_int(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise InvalidLsn("truncated term")
    tag = data[pos]
    if tag == _SMALL_INTEGER and pos + 2 <= len(data):
        return data[pos + 1], pos + 2
    if tag == _INTEGER and pos + 5 <= len(data):
        return struct.unpack_from(">i", data, pos + 1)[0], pos + 5
    if tag == _SMALL_BIG and pos + 3 <= len(data):
        n, sign = data[pos + 1], data[pos + 2]
        if n > _MAX_BIG_DIGITS or pos + 3 + n > len(data):
            raise InvalidLsn("integer too large or truncated")
        value = int.from_bytes(data[pos + 3 : pos + 3 + n], "little")
        return (-value if sign else value), pos + 3 + n
    if tag == _LARGE_BIG and pos + 6 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos + 1)
        if n > _MAX_BIG_DIGITS or pos + 6 + n > len(data):
            raise InvalidLsn("integer too large or truncated")
        sign = data[pos + 5]
        value = int.from_bytes(data[pos + 6 : pos + 6 + n], "little")
        return (-value if sign else value), pos + 6 + n
    raise InvalidLsn(f"expected an integer term at byte {pos}")


def decode_offset(data: bytes) -> Offset:
    """Parse ETF ``{L, R}`` with ``0 <= L <= R``; raises :class:`InvalidLsn` otherwise.

    Validating here matters: a bad offset sent to Vaxine kills the stream connection.
    """
    if len(data) < 3 or data[0] != _VERSION or data[1] != _SMALL_TUPLE or data[2] != 2:
        raise InvalidLsn("not an Erlang-term encoded {L, R} offset")
    left, pos = _decode_int(data, 3)
    right, pos = _decode_int(data, pos)
    if pos != len(data):
        raise InvalidLsn("trailing bytes after the offset term")
    if not 0 <= left <= right:
        raise InvalidLsn(f"offset {{{left}, {right}}} out of range")
    return (left, right)


def describe(lsn: bytes) -> str:
    """Short printable form for logs (lsns are opaque client bytes)."""
    try:
        text = lsn.decode("ascii")
        if text.isprintable():
            return repr(text)
    except UnicodeDecodeError:
        pass
    return lsn[:32].hex() + ("…" if len(lsn) > 32 else "")
