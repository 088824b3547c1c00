"""Postgres log sequence numbers.

An LSN is a 64-bit position in the write-ahead log. Postgres prints it as two upper-case hex
halves without zero padding (``"2/A7F4A880"``); on the wire it is 8 big-endian bytes.

``Lsn`` is an ``int`` subclass so it orders, hashes and compares like the 64-bit integer it is,
can be handed straight to psycopg2 (``send_feedback(flush_lsn=...)``), and prints in Postgres'
text form. Adding or subtracting an integer gives an ``Lsn``; the difference of two LSNs is a
plain byte count. Unlike the reference, incrementing carries into the high half at 2**32.
"""

from __future__ import annotations

MAX = (1 << 64) - 1


class Lsn(int):
    """A WAL position: ``Lsn(0x2A7F4A880)``, ``Lsn.parse("2/A7F4A880")``, ``str(lsn)``."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Lsn:
        value = int(value)
        if not 0 <= value <= MAX:
            raise ValueError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse Postgres' ``"X/Y"`` text form (any hex case)."""
        if not isinstance(text, str):
            raise TypeError(f"LSN text must be str, not {type(text).__name__}")
        high, sep, low = text.strip().partition("/")
        if not sep or not _is_hex32(high) or not _is_hex32(low):
            raise ValueError(f"not an LSN: {text!r}")
        return cls((int(high, 16) << 32) | int(low, 16))

    @classmethod
    def from_parts(cls, segment: int, offset: int) -> Lsn:
        if not (0 <= segment <= 0xFFFFFFFF and 0 <= offset <= 0xFFFFFFFF):
            raise ValueError(f"LSN halves out of range: {segment}, {offset}")
        return cls((segment << 32) | offset)

    @classmethod
    def from_bytes8(cls, data: bytes) -> Lsn:
        if len(data) != 8:
            raise ValueError("an LSN is 8 bytes")
        return cls(int.from_bytes(data, "big"))

    def to_bytes8(self) -> bytes:
        return int(self).to_bytes(8, "big")

    @property
    def segment(self) -> int:
        """High 32 bits (the reference calls it the segment)."""
        return int(self) >> 32

    @property
    def offset(self) -> int:
        """Low 32 bits."""
        return int(self) & 0xFFFFFFFF

    def __str__(self) -> str:
        return f"{self.segment:X}/{self.offset:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int(self).__format__(spec)

    # Arithmetic that stays in the LSN domain. LSN - LSN is a distance (plain int).
    def __add__(self, other: int) -> Lsn:
        if not isinstance(other, int):
            return NotImplemented
        return Lsn(int(self) + int(other))

    __radd__ = __add__

    def __sub__(self, other: int) -> Lsn | int:
        if not isinstance(other, int):
            return NotImplemented
        if isinstance(other, Lsn):
            return int(self) - int(other)
        return Lsn(int(self) - int(other))

    def increment(self, step: int = 10) -> Lsn:
        return self + step


ZERO = Lsn(0)


def _is_hex32(part: str) -> bool:
    if not 1 <= len(part) <= 8:
        return False
    try:
        int(part, 16)
    except ValueError:
        return False
    return part.isascii() and part.isalnum()


def coerce(value: Lsn | int | str) -> Lsn:
    """Accept an Lsn, an int or the text form (handy for config and SQL results)."""
    if isinstance(value, Lsn):
        return value
    if isinstance(value, str):
        return Lsn.parse(value)
    return Lsn(value)
