"""Satellite lsn bytes <-> Vaxine WAL offsets.

Clients persist the ``SatOpBegin.lsn`` we send and hand it back to resume, and other Electric
nodes may have to read it, so it is exactly Erlang's ``term_to_binary`` (OTP 24) of the
offset ``{L, R}``: :meth:`VaxineOffset.to_bytes` / :meth:`VaxineOffset.from_bytes`, which
reject anything a client sends that is not an offset we produced rather than guess at it.
"""

from __future__ import annotations

from electric.vaxine import etf
from electric.vaxine.offset import InvalidOffset, StartOffset, VaxineOffset

__all__ = ["InvalidLsn", "StartOffset", "decode_offset", "describe", "encode_offset"]

# The Satellite name of the error (sessions catch it around a client's lsn).
InvalidLsn = InvalidOffset


def encode_offset(offset: VaxineOffset | tuple[int, int] | int) -> bytes:
    """``term_to_binary(offset)`` for an offset ``(L, R)`` (or a bare integer, as tests use)."""
    if isinstance(offset, tuple) and len(offset) == 2:
        return VaxineOffset(*offset).to_bytes()
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"cannot encode {offset!r} as an offset term")
    return etf.encode(offset)


def decode_offset(data: bytes) -> VaxineOffset:
    """Parse ETF ``{L, R}`` with ``0 <= L <= R``; raises :class:`InvalidLsn` otherwise."""
    return VaxineOffset.from_bytes(data)


def describe(lsn: bytes) -> str:
    """Short printable form for logs (lsns are opaque client bytes)."""
    try:
        text = lsn.decode("ascii")
        if text.isprintable():
            return repr(text)
    except UnicodeDecodeError:
        pass
    return lsn[:32].hex() + ("…" if len(lsn) > 32 else "")
